"""ConvMAE: one full pretraining step with and without skipping the masked regions, and masking FLOPs.

For each model it times the median full step (forward, loss, backward, AdamW) of
* ``visible-only``: mimkit's default, conv stages computed on the visible regions only;
* ``dense``: the conv stages on every position with masked depthwise-conv inputs, as the authors' code does;
both on the same images and masks, so their losses must agree. It then counts forward FLOPs with
``torch.utils.flop_counter`` for block-wise masking (both paths) and for Table 5's input-token random
masking, whose ratio to block-wise the paper gives as about 1.7x. (Forward only: the counter charges a
depthwise conv's backward as if it were a dense conv, so step totals would be inflated.)

    python benchmarks/convmae_step.py --models convmae_tiny convmae_base --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import mimkit
from mimkit.engine.optim import adamw


def time_steps(model: torch.nn.Module, images: torch.Tensor, noise: torch.Tensor, warmup: int, repeats: int):
    optimizer = adamw(model.parameters(), lr=1e-4)
    times, losses = [], []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        out = model(images, noise=noise)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            times.append(time.perf_counter() - start)
            losses.append(out["loss"].item())
    return times, losses[0]


def forward_gflops(name: str, images: torch.Tensor, **overrides) -> float:
    model = mimkit.create_model(name, **overrides)
    noise = model.sample_noise(images.shape[0], tuple(images.shape[-2:]), torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, noise=noise)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convmae_tiny", "convmae_base"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.image_size} px, fp32"
    )
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))

    print(f"\n{'model':<18} {'path':<13} {'median s':>9} {'min s':>7} {'max s':>7} {'img/s':>7} {'loss':>9}")
    for name in args.models:
        medians = {}
        for path, skip in (("visible-only", True), ("dense", False)):
            torch.manual_seed(0)
            model = mimkit.create_model(name, skip_masked_regions=skip, img_size=args.image_size)
            noise = model.sample_noise(args.batch, (args.image_size,) * 2, torch.Generator().manual_seed(1))
            times, loss = time_steps(model, images, noise, args.warmup, args.repeats)
            medians[path] = statistics.median(times)
            print(
                f"{name:<18} {path:<13} {medians[path]:>9.3f} {min(times):>7.3f} {max(times):>7.3f} "
                f"{args.batch / medians[path]:>7.1f} {loss:>9.5f}"
            )
        print(f"{name:<18} speed-up of visible-only over dense: {medians['dense'] / medians['visible-only']:.2f}x")

    print(f"\nforward GFLOPs per batch of {args.batch} (block-wise vs Table 5's input-token random masking)")
    for name in args.models:
        sparse = forward_gflops(name, images, img_size=args.image_size)
        dense = forward_gflops(name, images, img_size=args.image_size, skip_masked_regions=False)
        random = forward_gflops(name, images, img_size=args.image_size, masking="random")
        print(
            f"{name:<18} block visible-only {sparse:8.1f} | block dense {dense:8.1f} | random {random:8.1f} | "
            f"random/block-dense {random / dense:.2f}x | random/block-visible-only {random / sparse:.2f}x"
        )


if __name__ == "__main__":
    main()
