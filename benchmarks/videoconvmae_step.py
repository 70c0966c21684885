"""VideoConvMAE: one full pretraining step (forward, loss, backward, AdamW) with the conv stages computed on the
visible cubes only (mimkit's default) and on every position with masked depthwise-conv inputs (the reference
path), on the same clips and tube masks, so their losses must agree.

    OMP_NUM_THREADS=2 python benchmarks/videoconvmae_step.py --models videoconvmae_tiny --batch 8 --image-size 64
"""

from __future__ import annotations

import argparse
import statistics

import torch
from convmae_step import time_steps  # the sibling script (benchmarks/ is on sys.path when run)

import mimkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["videoconvmae_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    size, frames = args.image_size, args.frames
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {frames}x{size}x{size}")
    clips = torch.randn(args.batch, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    print(f"\n{'model':<20} {'path':<13} {'median s':>9} {'min s':>7} {'max s':>7} {'clips/s':>8} {'loss':>9}")
    for name in args.models:
        for path, skip in (("visible-only", True), ("dense", False)):
            torch.manual_seed(0)
            model = mimkit.create_model(name, skip_masked_regions=skip, img_size=size, num_frames=frames)
            noise = model.sample_noise(args.batch, (size, size), torch.Generator().manual_seed(1))
            times, loss = time_steps(model, clips, noise, args.warmup, args.repeats)
            median = statistics.median(times)
            print(
                f"{name:<20} {path:<13} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} "
                f"{args.batch / median:>8.1f} {loss:>9.5f}"
            )


if __name__ == "__main__":
    main()
