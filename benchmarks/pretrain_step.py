"""Median time of one full pretraining step (forward, loss, backward, AdamW) for any registered models.

python benchmarks/pretrain_step.py --models mixmae_swin_tiny mixmae_swin_base_w14 --batch 8

A model may carry overrides, ``name:field=value,field=value``, to compare variants in one run, e.g.
``mixmae_swin_base_w14:separation=none`` (no group mask) next to ``mixmae_swin_base_w14``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

import mimkit
from mimkit.engine.optim import adamw


def parse_variant(spec: str) -> tuple[str, dict]:
    """``name:field=value,field=value`` to the model name and its overrides (values read as YAML scalars)."""
    name, _, fields = spec.partition(":")
    overrides = {}
    for item in filter(None, fields.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override '{item}' of '{spec}' is not field=value")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mixmae_swin_tiny", "mixmae_swin_base_w14"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = (args.image_size, args.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {size[0]} px, fp32")
    width = max(24, *(len(spec) for spec in args.models))
    print(f"{'model':<{width}} {'median s':>9} {'min s':>7} {'max s':>7} {'img/s':>7}")
    images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    for spec in args.models:
        name, overrides = parse_variant(spec)
        torch.manual_seed(0)
        model = mimkit.create_model(name, img_size=args.image_size, **overrides)
        optimizer = adamw(model.parameters(), lr=1e-4)
        noise = model.sample_noise(args.batch, size, torch.Generator().manual_seed(1))
        times = []
        for index in range(args.warmup + args.repeats):
            start = time.perf_counter()
            model(images, noise=noise)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{spec:<{width}} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} {args.batch / median:>7.1f}")


if __name__ == "__main__":
    main()
