"""``mimkit bench --peers``: mimkit's MAE timed side by side with transformers' and lightly's (:mod:`mimkit.peers`).

All implementations live in one process and start from the same weights (mimkit's, mapped into each peer), so
they compute the same thing; that is checked first: on the first batch each peer's loss must equal mimkit's within
``LOSS_TOLERANCE`` (relative). Then every round runs one full step (forward, loss, backward, fused AdamW with
mimkit's parameter groups) of each implementation in turn, mimkit first, on the same images and the same mask,
so a slower or busier stretch of the machine hits all of them alike. A result is the median step time of the
timed rounds after warm-up, images/s, the step's FLOPs counted with ``torch.utils.flop_counter``, the model FLOPs
utilization against the device's matmul peak measured in the same process, and the speed ratio: mimkit's speed
over the implementation's (above 1: mimkit is faster).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimkit.bench import (
    DEFAULT_BATCH,
    SIZES,
    StepTiming,
    check_device,
    peak_dtype,
    peak_matmul_gflops,
    seconds_of,
    step_timing_fields,
    train_step,
)
from mimkit.engine.optim import build_optimizer
from mimkit.engine.precision import autocast as precision_autocast
from mimkit.errors import MimkitError
from mimkit.peers import (
    IMPLEMENTATIONS,
    LIBRARIES,
    NOTES,
    build_implementation,
    copy_mimkit_weights,
    mae_config,
    peer_library,
)
from mimkit.runtime import keep_freed_memory

LOSS_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
"""Largest relative loss difference to mimkit on the same weights, images and mask that counts as the same loss:
fp32 leaves room for a GPU's TF32 convolutions and other summation orders (on a CPU they agree to ~1e-7); bf16
autocast rounds each implementation's matmuls differently."""


@dataclass
class PeerResult(StepTiming):
    implementation: str
    speed_ratio: float
    loss: float
    loss_matches: bool | None
    note: str
    compiled: bool = False


def run_peers(
    size: str = "base",
    batch: int | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    compile: bool = False,
) -> list[PeerResult]:
    """mimkit's MAE of ``SIZES[("mae", size)]`` and its peers, checked for the same loss, then timed in turn.

    With ``compile`` the timed steps run ``torch.compile`` of each implementation (compiled in the warm-up);
    FLOPs are counted eagerly."""
    if ("mae", size) not in SIZES:
        raise MimkitError(f"no MAE size '{size}'; known: {', '.join(s for m, s in SIZES if m == 'mae')}")
    if precision not in LOSS_TOLERANCE:
        raise MimkitError(f"precision must be one of {', '.join(LOSS_TOLERANCE)}, got '{precision}'")
    if repeats < 1 or warmup < 0 or (batch is not None and batch < 1):
        raise MimkitError("--batch and --repeats must be at least 1, --warmup at least 0")
    check_device(device)
    for implementation in LIBRARIES:
        peer_library(implementation)
    keep_freed_memory()
    name, overrides, default_size = SIZES[("mae", size)]
    image_size = image_size or default_size
    batch = batch or DEFAULT_BATCH[size]
    config = mae_config(name, img_size=image_size, **overrides)
    dev = torch.device(device)
    torch.manual_seed(0)
    modules = {implementation: build_implementation(implementation, config) for implementation in IMPLEMENTATIONS}
    for implementation, module in modules.items():
        if implementation != "mimkit":
            copy_mimkit_weights(modules["mimkit"].model, module, implementation)
        module.to(dev).train()
    reference = modules["mimkit"].model
    grid = (image_size, image_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, config.in_chans, image_size, image_size, generator=generator).to(dev)
    autocast = precision_autocast(dev, precision)

    def noise() -> torch.Tensor:
        return reference.sample_noise(batch, grid, generator).to(dev)

    first_noise = noise()
    with torch.no_grad(), autocast:
        losses = {impl: float(module(images, first_noise)) for impl, module in modules.items()}
    optimizers = {
        impl: build_optimizer(module, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95)) for impl, module in modules.items()
    }
    flops = {}
    for impl, module in modules.items():
        with FlopCounterMode(display=False) as counter:
            train_step(partial(module, images, first_noise), optimizers[impl], autocast)
        flops[impl] = counter.get_total_flops()
    timed = {impl: torch.compile(module) if compile else module for impl, module in modules.items()}
    times: dict[str, list[float]] = {impl: [] for impl in modules}
    warmup = max(warmup, 1 if compile else 0)
    for round_index in range(warmup + repeats):
        round_noise = noise()
        for impl, module in timed.items():
            step = partial(train_step, partial(module, images, round_noise), optimizers[impl], autocast)
            seconds = seconds_of(step, dev)
            if round_index >= warmup:
                times[impl].append(seconds)
    peak = peak_matmul_gflops(dev, peak_dtype(precision))
    mimkit_median = statistics.median(times["mimkit"])
    results = []
    for impl in modules:
        difference = abs(losses[impl] - losses["mimkit"]) / max(abs(losses["mimkit"]), 1e-12)
        matches = None if impl == "mimkit" else difference <= LOSS_TOLERANCE[precision]
        results.append(
            PeerResult(
                size=size,
                model=name,
                batch=batch,
                image_size=image_size,
                device=dev.type,
                precision=precision,
                **step_timing_fields(batch, times[impl], flops[impl], peak),
                implementation=impl,
                speed_ratio=statistics.median(times[impl]) / mimkit_median,
                loss=losses[impl],
                loss_matches=matches,
                note=NOTES[impl] if matches is not False else f"{NOTES[impl]}; loss differs by {difference:.1e}",
                compiled=compile,
            )
        )
    return results


def format_peers_table(results: list[PeerResult]) -> str:
    """A markdown table: one row per implementation and size."""
    lines = [
        "| implementation | size | batch | px | precision | median s (min-max) | img/s | GFLOP/step | MFU "
        "| mimkit speed ratio | same loss | note |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|---|---|",
    ]
    same = {None: "reference", True: "yes", False: "NO"}
    for r in results:
        mode = r.precision + (", compiled" if r.compiled else "")
        lines.append(
            f"| {r.implementation} | {r.size} | {r.batch} | {r.image_size} | {mode} "
            f"| {r.median_s:.3f} ({r.min_s:.3f}-{r.max_s:.3f}) | {r.images_per_s:.1f} | {r.gflop_per_step:.2f} "
            f"| {r.mfu:.2f} | {r.speed_ratio:.2f}x "
            f"| {same[r.loss_matches]} | {r.note} |"
        )
    return "\n".join(lines)
