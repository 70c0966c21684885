"""LocalMIM: median full pretraining step, and the share of it spent computing the targets.

For each model it times the median full step (forward incl. targets, per-tap losses, backward, AdamW) and,
separately, the median time of computing that model's targets for the same batch (HOG at every tap's cell
size, or normalized pixels), then prints the target time as a share of the step.

    python benchmarks/localmim_step.py --models localmim_vit_tiny localmim_vit_base --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mimkit
from mimkit.engine.optim import adamw


def median_seconds(run, warmup: int, repeats: int) -> float:
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        run()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, images: torch.Tensor, target: str, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one full step and of computing the targets alone, for the registered model ``name``."""
    torch.manual_seed(0)
    model = mimkit.create_model(name, img_size=images.shape[-1], target=target)
    optimizer = adamw(model.parameters(), lr=1e-4)
    noise = model.sample_noise(images.shape[0], tuple(images.shape[-2:]), torch.Generator().manual_seed(1))

    def step() -> None:
        model(images, noise=noise)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, warmup, repeats), median_seconds(lambda: model.targets(images), warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["localmim_vit_tiny", "localmim_vit_base"])
    parser.add_argument("--target", choices=["hog", "pixels"], default="hog")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.image_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {size} px, fp32")
    print(f"{'model':<24} {'target':>7} {'step s':>8} {'img/s':>7} {'targets s':>10} {'share':>7}")
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    for name in args.models:
        step_s, target_s = measure(name, images, args.target, args.warmup, args.repeats)
        share = 100 * target_s / step_s
        print(
            f"{name:<24} {args.target:>7} {step_s:>8.3f} {args.batch / step_s:>7.1f} {target_s:>10.4f} {share:>6.1f}%"
        )


if __name__ == "__main__":
    main()
