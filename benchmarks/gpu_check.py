"""The GPU check: one script that measures, on a GPU machine, what the CPU cannot, and prints one markdown report.

    python benchmarks/gpu_check.py --out gpu_check.md     # on a GPU machine: the full check, under 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke            # the reduced mode the test suite runs on a CPU

The machine needs PyTorch, timm, transformers (and lightly for its peer row) and this project's source, installed
without dependencies (``pip install --no-deps -e .``). Sections, cheapest first, each skipped with a note when the
time budget (``--budget``, default 450 s) would not allow it, so a late section never costs the earlier ones:

1. every parity case (``$MIMKIT_PARITY_DIR`` or ``../shared/parity``) in float32 with TF32 off: max |error|
   against the authors' float64 outputs, limit 1e-5 as in the test suite;
2. each method's base size: the loss under bf16 autocast against float32 on the same weights, batch and mask,
   relative difference limit :data:`BF16_TOLERANCE`;
3. training-step throughput per method at base size, batch :data:`GPU_BATCH`, bf16 (``mimkit.bench``: img/s, MFU
   against a bf16 matmul peak measured in the same process, peak memory), eager;
4. the peers of ``mimkit bench --peers`` (Hugging Face ViTMAE, lightly's MAE) in the same run;
5. loader throughput with all cores (``benchmarks/loader_throughput.py``);
6. a 1-GPU NCCL process group running a DDP step;
7. the throughput of section 3 under ``torch.compile`` (compilation is the slowest part, so it comes last).

The CPU smoke mode runs every section on the CPU at the small sizes, a batch of 2, one timed step, gloo instead
of NCCL and no compilation, so the script cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from parity_report import parity_rows  # noqa: E402

from mimkit.bench import SIZES, peak_dtype, peak_matmul_gflops, run_in_fresh_process  # noqa: E402
from mimkit.bench_peers import format_peers_table, run_peers  # noqa: E402
from mimkit.models import create_model  # noqa: E402

METHODS = ("mae", "convmae", "mixmae", "localmim")
GPU_BATCH = 128
"""Images per step on the GPU: within the papers' per-GPU batches (64-256) and what an 80 GB card holds for every
base model."""
PARITY_LIMIT = 1e-5
BF16_TOLERANCE = 2e-2
"""Relative loss difference allowed between bf16 autocast and float32: bf16 keeps 8 significant bits (~0.4%
per rounding); the loss averages many products, so its error stays well under this limit when the model is right."""
DEFAULT_BUDGET_S = 450.0


@dataclass
class Mode:
    """What a run measures: the GPU settings, or the reduced CPU smoke settings."""

    device: str
    precision: str
    """What the throughput and the peers are timed in: bf16 on the GPU, fp32 on the CPU (no native bf16)."""
    size: str
    batch: int
    image_size: int | None
    warmup: int
    repeats: int
    compile: bool
    loader_args: tuple[str, ...]
    backend: str

    @classmethod
    def gpu(cls) -> Mode:
        loader = ("--workers", str(os.cpu_count()))
        return cls("cuda", "bf16", "base", GPU_BATCH, None, 3, 10, True, loader, "nccl")

    @classmethod
    def cpu_smoke(cls) -> Mode:
        loader = ("--workers", "1", "--files", "8", "--images", "16", "--batch", "8", "--rounds", "1")
        return cls("cpu", "fp32", "small", 2, 32, 0, 1, False, loader, "gloo")


@dataclass
class Report:
    """The markdown sections, filled as the check goes; ``failures`` counts checks outside their limits."""

    budget_s: float
    header: list[str]
    start: float = field(default_factory=time.perf_counter)
    sections: list[str] = field(default_factory=list)
    failures: int = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, title: str, estimate_s: float, body: Callable[[], list[str]]) -> None:
        """Run one section unless the budget cannot hold its estimated time; a crash is reported, not raised."""
        print(f"[gpu_check {self.elapsed():5.0f} s] {title}", flush=True)
        if self.elapsed() + estimate_s > self.budget_s:
            spent = f"{self.elapsed():.0f} s spent, about {estimate_s:.0f} s needed"
            lines = [f"skipped: {spent}, budget {self.budget_s:.0f} s"]
        else:
            section_start = time.perf_counter()
            try:
                lines = body()
            except Exception as err:  # one broken section must not hide the others' results
                self.failures += 1
                lines = [f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"]
            lines.append(f"\n({time.perf_counter() - section_start:.0f} s)")
        self.sections.append(f"## {title}\n\n" + "\n".join(lines))

    def check(self, ok: bool) -> str:
        self.failures += not ok
        return "ok" if ok else "**FAIL**"

    def markdown(self) -> str:
        closing = f"{self.failures} check(s) failed" if self.failures else "all checks within their limits"
        ending = f"{closing}; {self.elapsed():.0f} s in all"
        return "\n\n".join(["# GPU check", "\n".join(self.header), *self.sections, ending])


def environment(mode: Mode) -> list[str]:
    device = torch.device(mode.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = peak_matmul_gflops(device, peak_dtype(mode.precision), repeats=3)
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} cores"
    return [
        f"- device: {name}; {versions}",
        f"- {mode.precision} matmul peak measured here: {peak / 1e3:.1f} TFLOP/s",
        f"- mode: {'GPU' if device.type == 'cuda' else 'CPU smoke'} (size {mode.size}, batch {mode.batch})",
    ]


def parity_section(report: Report, mode: Mode) -> list[str]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = parity_rows(torch.device(mode.device), (torch.float32,))
    if not rows:
        return ["no parity cases found (set MIMKIT_PARITY_DIR)"]
    lines = ["| case | max pred error | max latent error | loss error | within 1e-5 |", "|---|---|---|---|---|"]
    for label, _, errors in rows:
        pred = max(v for k, v in errors.items() if k.endswith("pred"))
        latent = max(v for k, v in errors.items() if k.endswith("latent"))
        worst = max(pred, latent, errors["loss"])
        status = report.check(worst <= PARITY_LIMIT)
        lines.append(f"| {label} | {pred:.2e} | {latent:.2e} | {errors['loss']:.2e} | {status} |")
    return lines


def bf16_section(report: Report, mode: Mode) -> list[str]:
    device = torch.device(mode.device)
    lines = [
        "| method | model | fp32 loss | bf16 loss | relative difference | within limit |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        name, overrides, default_size = SIZES[(method, mode.size)]
        image_size = mode.image_size or default_size
        torch.manual_seed(0)
        model = create_model(name, img_size=image_size, **overrides).to(device)
        shape = (mode.batch, model.in_chans, image_size, image_size)
        images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        noise = model.sample_noise(mode.batch, (image_size, image_size), torch.Generator().manual_seed(1))
        images, noise = images.to(device), noise.to(device)
        with torch.no_grad():
            full = model(images, noise=noise)["loss"].item()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                half = model(images, noise=noise)["loss"].float().item()
        relative = abs(half - full) / abs(full)
        status = report.check(relative <= BF16_TOLERANCE)
        lines.append(f"| {method} | {name} | {full:.5f} | {half:.5f} | {relative:.2e} | {status} |")
    return lines + [f"\nlimit: relative difference <= {BF16_TOLERANCE} (`BF16_TOLERANCE`)"]


def throughput_section(mode: Mode, compile: bool) -> list[str]:
    lines = [
        "| method | model | batch | px | median s | img/s | GFLOP/step | MFU | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        spec = {
            "method": method,
            "size": mode.size,
            "batch": mode.batch,
            "image_size": mode.image_size,
            "device": mode.device,
            "precision": mode.precision,
            "warmup": mode.warmup,
            "repeats": mode.repeats,
            "compile": compile,
        }
        r = run_in_fresh_process(spec)
        lines.append(
            f"| {method} | {r.model} | {r.batch} | {r.image_size} | {r.median_s:.4f} | {r.images_per_s:.1f} | "
            f"{r.gflop_per_step:.1f} | {r.mfu:.2f} | {r.peak_memory_mb:.0f} |"
        )
    mode_text = "torch.compile" if compile else "eager"
    return lines + [f"\n{mode.precision}, {mode_text}; MFU against the matmul peak measured in each process"]


def peers_section(mode: Mode) -> list[str]:
    results = run_peers(
        size=mode.size,
        batch=mode.batch,
        image_size=mode.image_size,
        device=mode.device,
        precision=mode.precision,
        warmup=mode.warmup,
        repeats=mode.repeats,
    )
    return [format_peers_table(results)]


def loader_section(mode: Mode) -> list[str]:
    command = [sys.executable, str(HERE / "loader_throughput.py"), *mode.loader_args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        "| workers | mimkit img/s | torchvision img/s | ratio |",
        "|---|---|---|---|",
        f"| {result['workers']} | {result['mimkit_images_per_s']:.0f} | {result['torchvision_images_per_s']:.0f} | "
        f"{result['ratio']:.2f}x |",
    ]


def ddp_step_child(backend: str) -> None:
    """One process group of one process: a DDP step whose gradient all-reduce must leave the gradient unchanged."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend, rank=0, world_size=1)
    model = torch.nn.Linear(64, 64).to(device)
    ddp = DistributedDataParallel(model)
    inputs = torch.randn(8, 64, device=device)
    start = time.perf_counter()
    ddp(inputs).square().mean().backward()
    gradient = model.weight.grad.clone()
    model.weight.grad = None
    model(inputs).square().mean().backward()
    same = torch.allclose(gradient, model.weight.grad)
    dist.destroy_process_group()
    print(json.dumps({"backend": backend, "same_gradient": same, "seconds": time.perf_counter() - start}))


def ddp_section(report: Report, mode: Mode) -> list[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    command = [sys.executable, __file__, "--ddp-step-child", mode.backend]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    status = report.check(result["same_gradient"])
    return [
        "| backend | DDP gradient equals the single-process one | first step s |",
        "|---|---|---|",
        f"| {result['backend']} | {status} | {result['seconds']:.3f} |",
    ]


def run_check(mode: Mode, budget_s: float) -> Report:
    report = Report(budget_s, environment(mode))
    report.run("Parity on the device (float32, TF32 off)", 60, lambda: parity_section(report, mode))
    report.run("bf16 autocast against float32", 30, lambda: bf16_section(report, mode))
    report.run("Training-step throughput, eager", 90, lambda: throughput_section(mode, compile=False))
    report.run("Peers (`mimkit bench --peers`)", 60, lambda: peers_section(mode))
    report.run("Loader throughput", 40, lambda: loader_section(mode))
    report.run(f"Process group ({mode.backend}) and a DDP step", 20, lambda: ddp_section(report, mode))
    if mode.compile:
        report.run("Training-step throughput, torch.compile", 150, lambda: throughput_section(mode, compile=True))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the reduced CPU mode (what the test suite runs)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all sections")
    parser.add_argument("--out", help="also write the report to this markdown file")
    parser.add_argument("--ddp-step-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_step_child:
        ddp_step_child(args.ddp_step_child)
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --cpu-smoke for the reduced CPU mode", file=sys.stderr)
        return 2
    mode = Mode.cpu_smoke() if args.cpu_smoke else Mode.gpu()
    report = run_check(mode, args.budget)
    text = report.markdown()
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
