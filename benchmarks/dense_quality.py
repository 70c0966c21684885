"""Dense prediction from a pretrained encoder against the same encoder at random init, same budget.

python benchmarks/dense_quality.py --out runs/dense_quality

1. Writes the dense demo set (real Fashion-MNIST items on canvases, ``mimkit.dense.demo_set``) to ``OUT/demo``.
2. Pretrains the quality benchmark's ConvMAE (``convmae/convmae_tiny_quality_fashion_mnist``: ``convmae_tiny``,
   64 px, 800 steps; ``docs/benchmarks.md``) to ``OUT/pretrain``, unless ``--checkpoint`` names one.
3. Trains and evaluates Mask R-CNN (box and mask AP on the COCO copy) and UperNet (mIoU on the ADE copy) twice
   with identical settings: from the pretrained encoder and from a random init of the same model.
4. Prints a markdown table (task, metric, pretrained, random, difference) with the wall time of every run and
   writes it with all settings to ``OUT/results.json``.

Every folder under ``OUT`` is started over on a rerun. Needs Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimkit.dense.config import load_detect_config, load_segment_config
from mimkit.dense.demo_set import DenseDemo, write_dense_demo
from mimkit.dense.run import dense_trainer
from mimkit.engine.pretrain import pretrain
from mimkit.quality import METHOD_CONFIGS, QualitySettings, method_config

PRETRAIN_METHOD = "convmae"
RANDOM_INIT = ["model.name=convmae_tiny", "data.in_chans=1", "data.mean=[0.286]", "data.std=[0.353]"]
"""The pretraining config's model and input format, for the random-init arm (the pretrained arm reads them from
its checkpoint)."""
METRICS = {"detect": ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"), "segment": ("mIoU", "mAcc", "aAcc")}
ARMS = ("pretrained", "random")


@dataclass
class DenseRun:
    task: str
    arm: str
    metrics: dict[str, Any]
    last_loss: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/dense_quality"))
    parser.add_argument("--checkpoint", type=Path, help="a pretrained convmae_tiny checkpoint (skips pretraining)")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (default: the config's 800)")
    parser.add_argument("--fashion-mnist", help="Fashion-MNIST idx folder (default: Debian's)")
    parser.add_argument("--train-images", type=int, default=400, help="demo-set training scenes")
    parser.add_argument("--val-images", type=int, default=100, help="demo-set validation scenes")
    parser.add_argument("--canvas", type=int, default=128, help="short side of the demo scenes")
    parser.add_argument("--img-size", type=int, default=128, help="training crop side of both tasks")
    parser.add_argument(
        "--lsj-range", type=float, nargs=2, default=[0.5, 1.5], help="detection's large-scale-jitter scale range"
    )
    parser.add_argument("--detect-steps", type=int, default=300)
    parser.add_argument("--segment-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detect-set", nargs="*", default=[], metavar="KEY=VALUE", help="more detect overrides")
    parser.add_argument("--segment-set", nargs="*", default=[], metavar="KEY=VALUE", help="more segment overrides")
    return parser.parse_args(argv)


def demo_set(args: argparse.Namespace) -> DenseDemo:
    """The demo set written afresh under ``OUT/demo`` (seeded, a few seconds), so the size arguments always hold."""
    root = args.out / "demo"
    shutil.rmtree(root, ignore_errors=True)
    return write_dense_demo(root, args.train_images, args.val_images, args.canvas, args.seed, args.fashion_mnist)


def pretrained_checkpoint(args: argparse.Namespace) -> tuple[Path, float]:
    """The checkpoint of the quality benchmark's ConvMAE pretraining and the seconds it took (0 when given)."""
    if args.checkpoint is not None:
        return args.checkpoint, 0.0
    settings = QualitySettings(steps=args.pretrain_steps, seed=args.seed, data_path=args.fashion_mnist)
    config = method_config(PRETRAIN_METHOD, settings, args.out / "pretrain")
    start = time.perf_counter()
    summary = pretrain(config, overwrite=True)
    return summary.checkpoint, time.perf_counter() - start


def task_overrides(task: str, demo: DenseDemo, args: argparse.Namespace) -> list[str]:
    """The settings both arms of ``task`` share."""
    if task == "detect":
        data = [
            f"data.train_images={demo.coco_train_images}",
            f"data.train_annotations={demo.coco_train_annotations}",
            f"data.val_images={demo.coco_val_images}",
            f"data.val_annotations={demo.coco_val_annotations}",
        ]
        data.append(f"data.scale_range={list(args.lsj_range)}")
        steps, extra = args.detect_steps, args.detect_set
    else:
        data = [f"data.path={demo.ade_root}", f"data.num_classes={demo.ade_num_classes}"]
        steps, extra = args.segment_steps, args.segment_set
    return [
        *data,
        f"data.img_size={args.img_size}",
        "data.num_workers=1",
        f"train.iterations={steps}",
        f"train.batch_size={args.batch_size}",
        f"train.seed={args.seed}",
        "train.device=cpu",
        f"optim.lr={args.lr}",
        f"optim.warmup_steps={args.warmup_steps}",
        *extra,
    ]


def run_arm(task: str, arm: str, shared: list[str], checkpoint: Path, out: Path) -> DenseRun:
    init = [f"model.checkpoint={checkpoint}"] if arm == "pretrained" else RANDOM_INIT
    load = load_detect_config if task == "detect" else load_segment_config
    config = load(None, [*shared, *init, f"output={out / f'{task}_{arm}'}"])
    start = time.perf_counter()
    summary = dense_trainer(config, overwrite=True).run()
    return DenseRun(task, arm, dict(summary.metrics), summary.last_loss, time.perf_counter() - start)


def comparison_table(runs: list[DenseRun]) -> str:
    by_key = {(run.task, run.arm): run for run in runs}
    lines = ["| task | metric | pretrained | random | difference |", "|---|---|---|---|---|"]
    for task, names in METRICS.items():
        for name in names:
            pretrained, random = (by_key[task, arm].metrics.get(name) for arm in ARMS)
            if pretrained is None or random is None:
                continue
            lines.append(f"| {task} | {name} | {pretrained:.2f} | {random:.2f} | {pretrained - random:+.2f} |")
    return "\n".join(lines)


def time_table(runs: list[DenseRun], pretrain_seconds: float, total_seconds: float) -> str:
    lines = ["| run | last loss | minutes |", "|---|---|---|"]
    if pretrain_seconds:
        lines.append(f"| pretrain {PRETRAIN_METHOD} | - | {pretrain_seconds / 60:.1f} |")
    lines += [f"| {run.task} {run.arm} | {run.last_loss:.4f} | {run.seconds / 60:.1f} |" for run in runs]
    lines.append(f"| total | - | {total_seconds / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    demo = demo_set(args)
    checkpoint, pretrain_seconds = pretrained_checkpoint(args)
    runs = []
    for task in METRICS:
        shared = task_overrides(task, demo, args)
        runs += [run_arm(task, arm, shared, checkpoint, args.out) for arm in ARMS]
    total = time.perf_counter() - start
    table, times = comparison_table(runs), time_table(runs, pretrain_seconds, total)
    print(f"\n{table}\n\n{times}")
    results = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "pretrain_config": METHOD_CONFIGS[PRETRAIN_METHOD],
        "checkpoint": str(checkpoint),
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": total,
        "runs": [vars(run) for run in runs],
        "table": table,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
