"""AdamW step time: the default multi-tensor update (the reference path) next to the fused kernel mimkit uses.

python benchmarks/optimizer_step.py --models mae_vit_base_patch16 mixmae_swin_base_w14

Gradients are random; each variant gets a warm-up step (its moments are allocated there), then the median of
``--repeats`` steps. The first column also times the very first step, where the multi-tensor update's temporaries
page-fault into fresh memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mimkit
from mimkit.engine.optim import adamw


def time_steps(optimizer: torch.optim.Optimizer, repeats: int) -> tuple[float, float]:
    """Seconds of the first step and the median of the next ``repeats``."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mae_vit_base_patch16", "mixmae_swin_base_w14"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"{'model':<24} {'params M':>9} {'variant':<12} {'first s':>8} {'median s':>9}")
    for name in args.models:
        params = [p for p in mimkit.create_model(name).parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(0)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        count = sum(p.numel() for p in params) / 1e6
        variants = {
            "multi-tensor": torch.optim.AdamW(params, lr=1e-4, foreach=True),
            "fused": adamw(params, lr=1e-4),
        }
        for label, optimizer in variants.items():
            first, median = time_steps(optimizer, args.repeats)
            print(f"{name:<24} {count:>9.1f} {label:<12} {first:>8.3f} {median:>9.3f}")


if __name__ == "__main__":
    main()
