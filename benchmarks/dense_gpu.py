"""The detection and segmentation demos at realistic sizes on one GPU: training speed (images/s), peak memory and
the metrics after a fixed time per task.

A short probe run measures each task's speed; the real run then gets the iterations that fill ``--seconds``, and
evaluates at its end. The encoder starts at random (no pretrained weights on the machine), so the metrics show that
the pipeline learns within minutes, not what the recipes reach.

    python benchmarks/dense_gpu.py --out runs/dense_gpu            # ConvMAE-B: Mask R-CNN at 1024, UperNet at 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mimkit.dense.config import load_detect_config, load_segment_config
from mimkit.dense.demo_set import write_dense_demo
from mimkit.dense.run import dense_trainer

PROBE_STEPS = 12


def _speeds(output: Path) -> list[float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_s"] for r in records if "images_per_s" in r]


def _run(task: str, overrides: list[str], output: Path) -> dict:
    load = load_detect_config if task == "detect" else load_segment_config
    config = load(None, [*overrides, f"output={output}"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = dense_trainer(config, overwrite=True).run()
    seconds = time.perf_counter() - start
    speeds = _speeds(output)[PROBE_STEPS // 3 :] or _speeds(output)
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"steps": summary.steps, "seconds": seconds, "images_per_s": statistics.median(speeds),
            "peak_memory_gib": memory, "metrics": summary.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dense_gpu"))
    parser.add_argument("--model", default="convmae_base")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per task after the probe")
    parser.add_argument("--detect-size", type=int, default=1024)
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--detect-batch", type=int, default=4)
    parser.add_argument("--segment-batch", type=int, default=8)
    parser.add_argument(
        "--head-channels", type=int, default=512, help="UperNet width (the recipes' 512); FPN and aux head: half"
    )
    parser.add_argument("--canvas", type=int, default=640, help="demo canvas (short side) in pixels")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--fashion-mnist", help="Fashion-MNIST idx folder (default: the Debian location)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers per process")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()

    demo_root = args.out / "demo"
    if not demo_root.exists():
        write_dense_demo(demo_root, args.train_images, args.val_images, args.canvas, 0, args.fashion_mnist)
    coco, ade = demo_root / "coco", demo_root / "ade"
    data = {
        "detect": [
            f"data.train_images={coco / 'train'}",
            f"data.train_annotations={coco / 'annotations' / 'instances_train.json'}",
            f"data.val_images={coco / 'val'}",
            f"data.val_annotations={coco / 'annotations' / 'instances_val.json'}",
            f"data.img_size={args.detect_size}",
            f"train.batch_size={args.detect_batch}",
            f"model.fpn_channels={args.head_channels // 2}",
        ],
        "segment": [
            f"data.path={ade}",
            "data.num_classes=11",
            f"data.img_size={args.segment_size}",
            f"train.batch_size={args.segment_batch}",
            f"model.channels={args.head_channels}",
            f"model.aux_channels={args.head_channels // 2}",
        ],
    }
    common = [f"model.name={args.model}", f"train.device={args.device}", f"train.precision={args.precision}",
              f"data.num_workers={args.workers}", "train.log_every=20"]
    results = {}
    for task in ("detect", "segment"):
        probe = _run(task, [*data[task], *common, f"train.iterations={PROBE_STEPS}", "data.val_limit=2",
                            "train.visualize_images=0"], args.out / f"{task}_probe")
        batch = args.detect_batch if task == "detect" else args.segment_batch
        steps = max(PROBE_STEPS, int(args.seconds * probe["images_per_s"] / batch))
        print(f"{task}: probe {probe['images_per_s']:.1f} images/s -> {steps} steps for {args.seconds:.0f} s")
        results[task] = _run(task, [*data[task], *common, f"train.iterations={steps}", "optim.lr=2e-4"],
                             args.out / task)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{args.model}, {args.precision}, {device}")
    print("| task | input | batch | steps | train images/s | peak memory | wall | metrics |")
    print("|---|---|---|---|---|---|---|---|")
    for task, r in results.items():
        size = args.detect_size if task == "detect" else args.segment_size
        batch = args.detect_batch if task == "detect" else args.segment_batch
        keys = ("bbox_AP", "bbox_AP50", "segm_AP") if task == "detect" else ("mIoU", "mAcc", "aAcc")
        shown = ", ".join(f"{k} {r['metrics'].get(k) or 0:.2f}" for k in keys)
        print(f"| {task} | {size} px | {batch} | {r['steps']} | {r['images_per_s']:.1f} | "
              f"{r['peak_memory_gib']:.1f} GiB | {r['seconds']:.0f} s | {shown} |")
    (args.out / "results.json").write_text(json.dumps({"device": device, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
