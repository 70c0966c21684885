"""LocalMIM's HOG targets: the straightforward formulation (the authors' ``torch.norm`` magnitude, the reference
path) next to mimkit's, timed in one run and checked bit-identical.

python benchmarks/hog_targets.py --batch 8 --image-size 224
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mimkit.targets import hog


def reference_magnitude(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """The authors' form: a vector norm over the stacked gradient channels."""
    return torch.stack([gx, gy], dim=1).norm(dim=1)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    target = hog.HOGTarget(nbins=9, num_targets=4)
    cells = (4, 8, 16, 32)
    optimized = target(images, cells)
    seconds = {"mimkit": median_seconds(lambda: target(images, cells), args.repeats)}
    fast_magnitude = hog.gradient_magnitude
    hog.gradient_magnitude = reference_magnitude
    try:
        reference = target(images, cells)
        seconds["reference (torch.norm)"] = median_seconds(lambda: target(images, cells), args.repeats)
    finally:
        hog.gradient_magnitude = fast_magnitude
    identical = all(torch.equal(a, b) for a, b in zip(optimized, reference, strict=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.image_size} px")
    print(f"HOG targets at cells {cells}, bit-identical: {identical}")
    for label, value in seconds.items():
        print(f"{label:<24} {value * 1000:8.1f} ms  {seconds['reference (torch.norm)'] / value:5.2f}x")


if __name__ == "__main__":
    main()
