"""``mimkit bench``: the speed of one full pretraining step (forward, loss, backward, AdamW) per method and size.

Each (method, size) runs in a fresh process, as the anchors were measured, so its peak memory is its own. A run
reports the median step time after warm-up with min and max, images/s, the step's FLOPs counted with
``torch.utils.flop_counter`` (forward and backward), the achieved FLOP/s, the model FLOPs utilization against the
peak matmul throughput of the same device measured in the same process (fp32; bf16 too on GPUs), peak memory, and
the speed ratio to the authors' released code where a stored anchor exists (``ANCHORS``: their steps timed once on
this project's CPU and stored, not re-run; ``mimkit bench --peers`` times other implementations in the same run).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimkit.engine.precision import autocast as precision_autocast
from mimkit.errors import MimkitError
from mimkit.runtime import keep_freed_memory

SIZES: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = {
    ("mae", "base"): ("mae_vit_base_patch16", {}, 224),
    ("convmae", "base"): ("convmae_base", {}, 224),
    ("mixmae", "base"): ("mixmae_swin_base_w14", {}, 224),
    ("localmim", "base"): ("localmim_vit_base", {"hog_nbins": 9}, 224),
    ("mae", "small"): (
        "mae_vit_tiny_patch16",
        {"depth": 8, "decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4},
        96,
    ),
    ("convmae", "small"): (
        "convmae_tiny",
        {"embed_dims": (64, 96, 192), "depths": (2, 2, 6), "num_heads": 3, "decoder_embed_dim": 128},
        96,
    ),
    ("mixmae", "small"): (
        "mixmae_swin_tiny",
        {
            "embed_dim": 64,
            "depths": (2, 2, 6, 2),
            "num_heads": (2, 4, 8, 16),
            "window_sizes": (6, 6, 6, 3),
            "decoder_embed_dim": 128,
        },
        96,
    ),
    ("localmim", "small"): (
        "localmim_vit_tiny",
        {"depth": 8, "decoder_embed_dim": 128, "decoder_num_heads": 4, "hog_nbins": 9},
        96,
    ),
}
"""(method, size) -> (registered model, overrides, image size). ``base`` are the paper BASE models; ``small`` are
the CPU-sized configurations of ``shared/bench/official_cpu.md`` (96 px)."""

ANCHORS: dict[tuple[str, str, int], float] = {
    ("mae", "base", 8): 4.73,
    ("convmae", "base", 8): 9.16,
    ("mixmae", "base", 8): 10.18,
    ("localmim", "base", 8): 3.74,
    ("mae", "base", 32): 23.88,
    ("convmae", "base", 32): 44.19,
    ("mixmae", "base", 32): 47.20,
    ("localmim", "base", 32): 13.72,
    ("mae", "small", 32): 0.20,
    ("convmae", "small", 32): 0.50,
    ("mixmae", "small", 32): 0.99,
    ("localmim", "small", 32): 1.08,
}
"""Median fp32 step seconds of the authors' released code on the 2-core CPU of this project's machines, at
224 px (base) or 96 px (small) (``shared/bench/official_cpu.md``). Ratios are meaningful on that machine only."""

DEFAULT_BATCH = {"base": 8, "small": 32}


@dataclass
class StepTiming:
    """What a timing of full pretraining steps reports, here and in ``mimkit bench --peers``."""

    size: str
    model: str
    batch: int
    image_size: int
    device: str
    precision: str
    median_s: float
    min_s: float
    max_s: float
    images_per_s: float
    gflop_per_step: float
    achieved_gflops: float
    peak_gflops: float
    mfu: float


def step_timing_fields(batch: int, times: list[float], flops: float, peak_gflops: float) -> dict[str, float]:
    """The :class:`StepTiming` numbers of ``batch`` images a step from step ``times`` (s) and ``flops`` a step."""
    median = statistics.median(times)
    achieved = flops / median / 1e9
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "images_per_s": batch / median,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": achieved,
        "peak_gflops": peak_gflops,
        "mfu": achieved / peak_gflops,
    }


@dataclass
class BenchResult(StepTiming):
    method: str
    peak_memory_mb: float
    anchor_s: float | None
    speedup_vs_anchor: float | None
    compiled: bool = False


def peak_matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best of ``repeats`` square matmuls of ``size``, in GFLOP/s: the device's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(seconds_of(partial(torch.mm, a, b), device) for _ in range(repeats + 1))
    return 2 * size**3 / best / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(run: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``run()``, with the device's queued work finished before and after."""
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - start


def check_device(device: str) -> None:
    """``--device cuda`` needs a visible GPU: a clear error before anything is built."""
    if device == "cuda" and not torch.cuda.is_available():
        raise MimkitError("--device cuda, but no CUDA device is available")


def peak_dtype(precision: str) -> torch.dtype:
    """The matmul type whose peak a step in ``precision`` is measured against (its MFU's denominator)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def train_step(loss_of: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, autocast) -> None:
    """One full step: the loss ``loss_of()`` computes under ``autocast``, backward, optimizer step, cleared
    gradients."""
    with autocast:
        loss = loss_of()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(
    method: str,
    size: str,
    batch: int,
    image_size: int | None,
    device: str,
    precision: str,
    warmup: int,
    repeats: int,
    compile: bool = False,
) -> BenchResult:
    """Time ``repeats`` full steps after ``warmup`` of the (method, size) model, in this process.

    FLOPs are counted on the eager model; with ``compile`` the timed steps run ``torch.compile(model)`` and the
    compilation happens in the (at least one) warm-up step."""
    from mimkit.engine.optim import build_optimizer
    from mimkit.models import create_model

    name, overrides, default_size = SIZES[(method, size)]
    image_size = image_size or default_size
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(name, img_size=image_size, **overrides).to(dev)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    images = torch.randn(batch, model.in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    images = images.to(dev)
    noise = model.sample_noise(batch, (image_size, image_size), torch.Generator().manual_seed(1)).to(dev)
    autocast = precision_autocast(dev, precision)

    def step(module: torch.nn.Module = model) -> None:
        train_step(lambda: module(images, noise=noise)["loss"], optimizer, autocast)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    timed = torch.compile(model) if compile else model
    for _ in range(max(warmup, 1 if compile else 0)):
        step(timed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = [seconds_of(partial(step, timed), dev) for _ in range(repeats)]
    if dev.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = peak_matmul_gflops(dev, peak_dtype(precision))
    anchor = ANCHORS.get((method, size, batch)) if image_size == default_size and precision == "fp32" else None
    timing = step_timing_fields(batch, times, flops, peak)
    return BenchResult(
        method=method,
        size=size,
        model=name,
        batch=batch,
        image_size=image_size,
        device=dev.type,
        precision=precision,
        **timing,
        peak_memory_mb=peak_memory,
        anchor_s=anchor,
        speedup_vs_anchor=anchor / timing["median_s"] if anchor else None,
        compiled=compile,
    )


def run_in_fresh_process(spec: dict[str, Any]) -> BenchResult:
    """:func:`measure` in a child Python process (its own peak memory and allocator state)."""
    command = [sys.executable, "-m", "mimkit.bench", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MimkitError(f"benchmark of {spec['method']}/{spec['size']} failed:\n{result.stderr[-2000:]}")
    return BenchResult(**json.loads(result.stdout.strip().splitlines()[-1]))


def format_table(results: list[BenchResult]) -> str:
    header = (
        f"{'method':<9}{'size':<6}{'batch':>6}{'px':>5}{'median s':>10}{'min s':>8}{'max s':>8}{'img/s':>8}"
        f"{'GFLOP':>9}{'GFLOP/s':>9}{'peak':>7}{'MFU':>6}{'mem MB':>8}{'stored anchor s':>16}{'speed-up':>9}"
    )
    lines = [header]
    for r in results:
        anchor = f"{r.anchor_s:>16.2f}{r.speedup_vs_anchor:>8.2f}x" if r.anchor_s else f"{'-':>16}{'-':>9}"
        lines.append(
            f"{r.method:<9}{r.size:<6}{r.batch:>6}{r.image_size:>5}{r.median_s:>10.3f}{r.min_s:>8.3f}"
            f"{r.max_s:>8.3f}{r.images_per_s:>8.1f}{r.gflop_per_step:>9.1f}{r.achieved_gflops:>9.1f}"
            f"{r.peak_gflops:>7.0f}{r.mfu:>6.2f}{r.peak_memory_mb:>8.0f}{anchor}"
        )
    return "\n".join(lines)


def run_benchmarks(
    methods: list[str],
    sizes: list[str],
    batch: int | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    compile: bool = False,
) -> list[BenchResult]:
    """Every requested (method, size), each in a fresh process; unknown names fail before anything runs."""
    unknown = [(m, s) for m in methods for s in sizes if (m, s) not in SIZES]
    if unknown:
        raise MimkitError(f"no benchmark configuration for {unknown}; known: {sorted(SIZES)}")
    check_device(device)
    results = []
    for method in methods:
        for size in sizes:
            spec = {
                "method": method,
                "size": size,
                "batch": batch or DEFAULT_BATCH[size],
                "image_size": image_size,
                "device": device,
                "precision": precision,
                "warmup": warmup,
                "repeats": repeats,
                "compile": compile,
            }
            results.append(run_in_fresh_process(spec))
            print(format_table(results[-1:]).splitlines()[1], flush=True)
    return results


def results_json(results: list[BenchResult]) -> str:
    return json.dumps(
        {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": [asdict(r) for r in results]},
        indent=2,
    )


if __name__ == "__main__":
    keep_freed_memory()
    print(json.dumps(asdict(measure(**json.loads(sys.argv[1])))))
