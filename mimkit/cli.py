"""The ``mimkit`` command line. Thin by design: every command calls a library function.

Arguments are parsed and configs validated before torch and the models are imported, so ``--help``, ``--version``
and a config mistake answer at once. Every user mistake ends in one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from mimkit import __version__
from mimkit.config_paths import packaged_configs, resolve_config_path
from mimkit.errors import MimkitError
from mimkit.runtime import keep_freed_memory

USER_MISTAKE = 2
"""Exit code of a user mistake (as argparse uses for a bad command line)."""
ALL_METHODS = ["mae", "convmae", "mixmae", "localmim"]
"""What ``mimkit bench`` times without ``--methods``."""
FILE_LIST_SUFFIXES = (".csv", ".txt")
"""``--data`` naming such a file reads it as a file list (``data.source=filelist``)."""


def _pretrain(args: argparse.Namespace) -> int:
    from mimkit.api import pretrainer
    from mimkit.config_schema import load_yaml
    from mimkit.engine.config_parts import CLIP_SOURCES

    overrides = list(args.overrides)
    config_path = resolve_config_path(args.config, args.command)
    if args.data:
        overrides.append(f"data.path={args.data}")
        if not any(o.startswith("data.source=") for o in overrides):
            video = (load_yaml(config_path) if config_path else {}).get("data", {}).get("source") in CLIP_SOURCES
            listed = Path(args.data).suffix.lower() in FILE_LIST_SUFFIXES
            overrides.append(f"data.source={'clips' if video else 'filelist' if listed else 'folder'}")
    if args.output:
        overrides.append(f"output={args.output}")
    trainer = pretrainer(
        config_path, overrides=overrides, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes
    )
    if args.dry_run:
        lines = [*trainer.describe(), *trainer.session.notes]
        print("\n".join([*lines, "dry run: stopped after the summary; nothing written"]))
        return 0
    summary = trainer.run()
    if not trainer.dist.is_main:  # under torchrun the main process reports the run
        return 0
    print(f"done: {summary.steps} steps in {summary.seconds:.1f} s, last loss {summary.last_loss:.4f}")
    print(f"checkpoint:      {summary.checkpoint}")
    print(f"metrics log:     {summary.metrics}")
    if "tensorboard" in trainer.config.train.trackers:
        print(f"tensorboard:     {summary.output / 'tensorboard'}")
    if summary.reconstructions:
        print(f"reconstructions: {summary.reconstructions[-1]}")
    return 0


def _transfer_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.checkpoint:
        overrides.append(f"model.checkpoint={args.checkpoint}")
    if getattr(args, "output", None):
        overrides.append(f"output={args.output}")
    return overrides


def _transfer(args: argparse.Namespace) -> int:
    from mimkit.api import transfer_trainer

    trainer = transfer_trainer(
        args.command,
        args.config,
        overrides=_transfer_overrides(args),
        resume="auto" if args.resume else None,
        overwrite=args.overwrite,
        allow_changes=args.allow_changes,
    )
    summary = trainer.run()
    if not trainer.dist.is_main:
        return 0
    print(
        f"done: {summary.steps} steps in {summary.seconds:.1f} s; val top-1 {summary.last_top1:.2f}% "
        f"(best {summary.best_top1:.2f}%), top-5 {summary.last_top5:.2f}%"
    )
    print(f"best checkpoint: {summary.best_checkpoint}")
    print(f"last checkpoint: {summary.last_checkpoint}")
    return 0


def _dense(args: argparse.Namespace) -> int:
    from mimkit.dense.config import DetectConfig, SegmentConfig, load_detect_config, load_segment_config

    detect = args.command == "detect"
    config_type = DetectConfig if detect else SegmentConfig
    config_path, overrides = resolve_config_path(args.config, args.command), _transfer_overrides(args)
    if args.resume:
        from mimkit.engine.resume_config import load_resumed_config

        config, checkpoint = load_resumed_config(config_type, config_path, overrides, "auto", args.allow_changes)
    else:
        config, checkpoint = (load_detect_config if detect else load_segment_config)(config_path, overrides), None

    from mimkit.dense.run import dense_trainer

    trainer = dense_trainer(config, checkpoint, args.overwrite, args.allow_changes)
    summary = trainer.run()
    if not trainer.dist.is_main:
        return 0
    headline = trainer.task.headline(summary.metrics) if summary.metrics else "not evaluated"
    print(f"done: {summary.steps} steps in {summary.seconds:.1f} s, last loss {summary.last_loss:.4f}; {headline}")
    print(f"evaluation: {summary.output / 'eval.json'}")
    if summary.picture:
        print(f"picture:    {summary.picture}")
    print(f"checkpoint: {summary.checkpoint}")
    return 0


def _dense_demo(args: argparse.Namespace) -> int:
    from mimkit.dense.demo_set import write_dense_demo

    paths = write_dense_demo(Path(args.output), args.train, args.val, args.size, args.seed)
    print(paths.describe())
    return 0


def _knn(args: argparse.Namespace) -> int:
    from mimkit.api import knn

    result = knn(args.config, overrides=_transfer_overrides(args))
    print(
        f"kNN: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  ({result.train_images} training, "
        f"{result.val_images} validation images, {result.seconds:.1f} s)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "hub":
        from mimkit.load import save_hub_folder

        folder = save_hub_folder(args.checkpoint, args.output)
        print(f"model written to {folder} (config.json, model.safetensors, README.md); load it with")
        print(f"  mimkit.from_pretrained('{folder}')  (push it with model.push_to_hub('user/name'))")
        return 0
    from mimkit.export import export_encoder

    exported = export_encoder(args.checkpoint, args.output)
    classes = exported.pretrained_cfg["num_classes"]
    what = f"{classes}-class classifier (encoder and head)" if classes else "encoder"
    print(f"{what} written to {exported.path}; load it with")
    print(
        f"  timm.create_model('{exported.timm_name}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='{exported.path}'))"
    )
    print(
        "after `import mimkit.export`; the file sets the model's size and its input (timm.data.resolve_data_config). "
        f"Add num_classes=N for {'another' if classes else 'a'} head, features_only=True for multi-scale maps"
    )
    if exported.head_left_out:
        print(f"note: the head is not exported: {exported.head_left_out}")
    return 0


def _report_skipped(skipped: list[str]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped))


def _predict(args: argparse.Namespace) -> int:
    from mimkit.eval.predict import predict_images

    result = predict_images(args.checkpoint, args.images, args.output, args.top_k, args.batch_size, args.overwrite)
    _report_skipped(result.skipped)
    print(f"top-{result.top_k} predictions for {len(result.predictions)} images: {result.output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mimkit.eval.predict import evaluate_folder

    result = evaluate_folder(args.checkpoint, args.data, args.output, args.top_k, args.batch_size, args.overwrite)
    _report_skipped(result.skipped)
    print(
        f"top-1 {result.top1:.2f}%  top-{result.top_k} {result.top_k_accuracy:.2f}%  ({result.images} images, "
        f"{len(result.per_class)} classes)"
    )
    for name, scores in result.per_class.items():
        accuracy = "no images" if scores["top1"] is None else f"top-1 {scores['top1']:.2f}% of {scores['images']}"
        print(f"  {name}: {accuracy}")
    if args.output:
        print(f"metrics: {args.output}")
    return 0


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from mimkit.engine.sharded_checkpoint import convert_sharded

    path = convert_sharded(Path(args.checkpoint), Path(args.output))
    print(f"checkpoint written to {path}; mimkit finetune (model.checkpoint=) and mimkit export read it")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mimkit.quality import METHOD_CONFIGS, QualitySettings, run_quality
    from mimkit.quality_report import PLOT_NAME, format_markdown

    settings = QualitySettings(
        steps=args.steps,
        eval_points=tuple(args.eval_points) if args.eval_points else None,
        finetune_epochs=args.finetune_epochs,
        full_label_epochs=args.full_label_epochs,
        train_images=args.train_images,
        test_images=args.test_images,
    )
    methods = list(METHOD_CONFIGS) if args.methods is ALL_METHODS else args.methods
    report = run_quality(methods, settings, args.out)
    print()
    print(format_markdown(report))
    print(f"results: {Path(args.out) / 'results.json'}, {Path(args.out) / 'results.md'}, {Path(args.out) / PLOT_NAME}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"results: {args.json}")
    print(f"wall time: {report.seconds / 60:.1f} min")
    return 0


def _timing_options(args: argparse.Namespace) -> dict:
    """The options of ``mimkit bench`` that say how to time, as ``run_benchmarks`` and ``run_peers`` take them."""
    names = ("batch", "image_size", "device", "precision", "warmup", "repeats", "compile")
    return {name: getattr(args, name) for name in names}


def _bench(args: argparse.Namespace) -> int:
    from mimkit.bench import format_table, results_json, run_benchmarks

    if args.quality and args.peers:
        raise MimkitError("--quality and --peers are different benchmarks; choose one")
    if args.quality:
        return _quality(args)
    if args.peers:
        return _bench_peers(args)
    mode = f"{args.device}, {args.precision}" + (", torch.compile" if args.compile else "")
    print(f"mimkit bench: {mode}, full steps (forward, loss, backward, AdamW); one process each")
    results = run_benchmarks(args.methods, args.sizes, **_timing_options(args))
    print()
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(results_json(results) + "\n")
        print(f"results: {args.json}")
    return 0


def _bench_peers(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mimkit.bench_peers import format_peers_table, run_peers

    if args.methods not in (ALL_METHODS, ["mae"]):
        raise MimkitError("--peers compares MAE implementations only; leave out --methods")
    print(f"mimkit bench --peers: MAE in mimkit, transformers and lightly; {args.device}, {args.precision}")
    results = []
    for size in args.sizes:
        results += run_peers(size, **_timing_options(args))
    print(format_peers_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from mimkit.inference import visualize_images

    path = visualize_images(args.checkpoint, args.images, args.output, seed=args.seed, max_images=args.max_images)
    print(f"reconstructions: {path}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from mimkit.data.shards import write_shards

    count = write_shards(args.source, args.out, args.shard_size, progress=sys.stderr.isatty())
    print(f"wrote {count} images as shards to {args.out}; train on them with data.source=shards data.path={args.out}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    recipes = packaged_configs()
    width = max(len(name) for name, _ in recipes)
    for name, summary in recipes:
        print(f"{name:<{width}}  {summary}")
    print(
        f"\n{len(recipes)} recipes; run one with `mimkit pretrain --config NAME` (finetune/...: `mimkit finetune`, "
        "detect/...: `mimkit detect`, segment/...: `mimkit segment`)"
    )
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (with exit code 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USER_MISTAKE, f"error: {message} (see `{self.prog} --help`)\n")


def _add_run_options(parser: argparse.ArgumentParser, resume_from: bool) -> None:
    """How a training command treats its output folder (``docs/runs.md``)."""
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_const", const="auto", help="continue the run in OUTPUT from its last checkpoint"
    )
    if resume_from:
        start.add_argument("--resume-from", dest="resume", metavar="CKPT", help="continue from this checkpoint")
    start.add_argument(
        "--overwrite", action="store_true", help="start over: delete the run already in OUTPUT (checkpoints, logs)"
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="let --resume change what the run is (data, sizes, batch, schedule, optimizer, seed, model)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mimkit", description="Masked-image-modeling pretraining.")
    parser.add_argument("--version", action="version", version=f"mimkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain", help="pretrain a model (default: tiny MAE on the sample photos)")
    pre.add_argument("--config", help="YAML config: a path, or a packaged recipe such as mae/vit_base_800ep")
    pre.add_argument(
        "--data",
        help="a folder of images, a .csv/.txt file list, or a folder of clips for a video config (sets data.path and "
        "data.source=folder|filelist|clips)",
    )
    pre.add_argument("--output", help="output directory (sets output=...)")
    _add_run_options(pre, resume_from=True)
    pre.add_argument("--dry-run", action="store_true", help="print the run's summary and stop; writes nothing")
    pre.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=10 model.args.mask_ratio=0.6",
    )
    pre.set_defaults(handler=_pretrain)

    for command, text in (
        ("finetune", "fine-tune a pretrained encoder with a linear head (default: Fashion-MNIST)"),
        ("linprobe", "train a linear probe on a frozen pretrained encoder"),
        ("knn", "weighted kNN classification on frozen features"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--config", help="YAML config: a path, or a packaged recipe such as finetune/...")
        sub.add_argument("--checkpoint", help="pretrained weights: a mimkit checkpoint or an authors' release")
        sub.add_argument("--output", help="output directory (knn: a JSON file for the result)")
        if command != "knn":
            _add_run_options(sub, resume_from=False)
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
        sub.set_defaults(handler=_knn if command == "knn" else _transfer)

    for command, text, example in (
        ("detect", "train and evaluate Mask R-CNN on a pretrained encoder (COCO-format data)", "detect/..."),
        ("segment", "train and evaluate UperNet on a pretrained encoder (ADE20K-style data)", "segment/..."),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--config", help=f"YAML config: a path, or a packaged recipe such as {example}")
        sub.add_argument("--checkpoint", help="pretrained weights: a mimkit checkpoint or an authors' release")
        sub.add_argument("--output", help="output directory (sets output=...)")
        _add_run_options(sub, resume_from=False)
        sub.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.val_images=coco/val2017"
        )
        sub.set_defaults(handler=_dense)

    demo = commands.add_parser(
        "dense-demo", help="write a small detection/segmentation set from Fashion-MNIST items (COCO and ADE20K layouts)"
    )
    demo.add_argument("output", help="folder to create (must not exist or be empty)")
    demo.add_argument("--train", type=int, default=200, help="training images (default 200)")
    demo.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    demo.add_argument("--size", type=int, default=128, help="canvas height in pixels (default 128)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_dense_demo)

    exp = commands.add_parser(
        "export", help="write an encoder or fine-tuned classifier as a file timm loads, or a Hugging Face Hub folder"
    )
    exp.add_argument(
        "--checkpoint", required=True, help="a mimkit checkpoint: pretraining, fine-tuning or probe (.safetensors)"
    )
    exp.add_argument(
        "--output", required=True, help="the encoder file to write (.safetensors); --format hub: a new folder"
    )
    exp.add_argument(
        "--format",
        choices=["timm", "hub"],
        default="timm",
        help="timm: the encoder for timm.create_model (default); hub: the pretraining model as a Hugging Face Hub "
        "folder (config.json, model.safetensors, model card) for mimkit.from_pretrained and push_to_hub",
    )
    exp.set_defaults(handler=_export)

    predict = commands.add_parser("predict", help="classify images with a fine-tuned checkpoint (top-k, CSV/JSON)")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.set_defaults(handler=_predict)
    evaluate = commands.add_parser(
        "evaluate", help="top-1/top-k and per-class accuracy of a fine-tuned checkpoint on a labelled folder"
    )
    evaluate.add_argument("--data", required=True, help="a folder with one sub-folder of images per class")
    evaluate.set_defaults(handler=_evaluate)
    for sub, output_help in (
        (predict, "the predictions to write: .csv (a row per image) or .json"),
        (evaluate, "also write the metrics to this .json file"),
    ):
        sub.add_argument(
            "--checkpoint", required=True, help="a `mimkit finetune` (or linprobe) checkpoint (.safetensors)"
        )
        sub.add_argument("--output", required=sub is predict, help=output_help)
        sub.add_argument("--top-k", type=int, help="how many of the most likely classes (default 5, at most all)")
        sub.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's eval batch)")
        sub.add_argument("--overwrite", action="store_true", help="replace --output if it exists")

    convert = commands.add_parser(
        "convert-checkpoint", help="write an FSDP run's sharded checkpoint (a .dcp folder) as one .safetensors file"
    )
    convert.add_argument("--checkpoint", required=True, help="the sharded checkpoint, e.g. RUN/checkpoints/last.dcp")
    convert.add_argument("--output", required=True, help="the checkpoint file to write (.safetensors; must not exist)")
    convert.set_defaults(handler=_convert_checkpoint)

    bench = commands.add_parser(
        "bench", help="time a full pretraining step per method and size; --quality: the quality benchmark"
    )
    bench.add_argument(
        "--methods", nargs="+", default=ALL_METHODS, help="methods to run (--quality: default all five, MR-MAE too)"
    )
    bench.add_argument("--sizes", nargs="+", default=["small"], help="small (96 px, CPU-sized) and/or base (224 px)")
    bench.add_argument("--batch", type=int, help="images per step (default: 32 for small, 8 for base)")
    bench.add_argument("--image-size", type=int, help="input size (default: the size's own)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (GPUs)")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--compile", action="store_true", help="time torch.compile(model) (compiled in warm-up)")
    bench.add_argument("--json", help="also write the results to this JSON file")
    bench.add_argument(
        "--peers",
        action="store_true",
        help="time MAE side by side with transformers' and lightly's (pip install 'mimkit[bench]'), same loss checked",
    )
    bench.add_argument(
        "--quality",
        action="store_true",
        help="instead of timing steps: pretrain on Fashion-MNIST and score kNN, linear probe, low-label fine-tuning",
    )
    bench.add_argument("--steps", type=int, help="--quality: pretraining steps per method (default: the configs' 800)")
    bench.add_argument(
        "--eval-points", type=int, nargs="+", help="--quality: steps at which to score (default: 0, 1/4, 1/2, all)"
    )
    bench.add_argument("--out", default="runs/quality", help="--quality: output folder (default: runs/quality)")
    bench.add_argument(
        "--finetune-epochs", type=int, default=20, help="--quality: epochs of every low-label fine-tuning run (20)"
    )
    bench.add_argument(
        "--full-label-epochs",
        type=int,
        default=5,
        help="--quality: epochs of the full-label fine-tuning reference (5; 0 leaves it out)",
    )
    bench.add_argument(
        "--train-images",
        type=int,
        help="--quality: score with N training images only, class-balanced and seeded (quick checks)",
    )
    bench.add_argument(
        "--test-images", type=int, help="--quality: score on N test images only, class-balanced and seeded"
    )
    bench.set_defaults(handler=_bench)

    viz = commands.add_parser("visualize", help="write a reconstruction grid for some images")
    viz.add_argument("--checkpoint", required=True, help="a mimkit pretraining checkpoint (.safetensors)")
    viz.add_argument("--images", nargs="+", required=True, help="image files or folders")
    viz.add_argument("--output", default="reconstruction.png", help="PNG to write")
    viz.add_argument("--seed", type=int, default=0, help="seed of the random mask (and of the choice of images)")
    viz.add_argument(
        "--max-images", type=int, default=16, help="images in one grid; of more, a choice seeded by --seed (default 16)"
    )
    viz.set_defaults(handler=_visualize)

    shards = commands.add_parser("shards", help="write an image folder as shards that training can stream")
    shards.add_argument("source", help="the image folder (class sub-folders become labels, as data.source=folder)")
    shards.add_argument("out", help="a new or empty folder, or a URL such as s3://bucket/shards (mosaicml-streaming)")
    shards.add_argument("--shard-size", help="largest shard in bytes, or e.g. 64mb (the default), 1gb")
    shards.set_defaults(handler=_shards)

    recipes = commands.add_parser("configs", help="list the packaged recipes (names for --config)")
    recipes.set_defaults(handler=_configs)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere after the command, also after options."""
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.exit(
            USER_MISTAKE,
            f"error: unrecognized arguments: {' '.join(stray or extra)} (see `mimkit {args.command} --help`)\n",
        )
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _os_error_line(err: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do about it."""
    where = f"{err.filename}: " if err.filename else ""
    reason = err.strerror or str(err)
    fixes = {
        errno.ENOSPC: "free some disk space or choose another --output",
        errno.EDQUOT: "free some disk space or choose another --output",
        errno.EACCES: "choose a folder you can write to",
        errno.EPERM: "choose a folder you can write to",
        errno.EROFS: "choose a folder on a writable file system",
        errno.ENOTDIR: "a path component is a file; choose another path",
        errno.EEXIST: "a file is in the way; choose another path",
        errno.EISDIR: "a folder is in the way; name a file",
    }
    fix = fixes.get(err.errno, "check the path and try again")
    return f"{where}{reason}; {fix}"


def _leave_process_group() -> None:
    """A command run under torchrun leaves its process group with the other processes (nothing to do, and torch
    not imported, for the commands that never joined one)."""
    if "torch.distributed" in sys.modules:
        from mimkit.engine.distributed import leave_together

        leave_together()


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    keep_freed_memory()
    try:
        code = args.handler(args)
        _leave_process_group()
        return code
    except MimkitError as err:
        message = str(err)
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the worker's own error line
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    except FileNotFoundError as err:
        message = str(err) if not err.filename else f"{err.filename}: not found"
    except OSError as err:
        message = _os_error_line(err)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return USER_MISTAKE


if __name__ == "__main__":
    sys.exit(main())
