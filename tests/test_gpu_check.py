"""``benchmarks/gpu_check.py`` runs its reduced CPU mode here, so the script a GPU machine runs cannot rot."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.parity_cases import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = (
    "## Parity on the device",
    "## bf16 autocast against float32",
    "## Training-step throughput, eager",
    "## Peers",
    "## Loader throughput",
    "## Process group (gloo) and a DDP step",
)


def test_cpu_smoke_mode_runs_every_section_within_its_limits(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text()
    for title in SECTIONS:
        assert title in report
    assert "FAIL" not in report and "skipped" not in report
    assert "all checks within their limits" in report
    for method in ("mae", "convmae", "mixmae", "localmim"):
        assert f"| {method} |" in report.split("## Training-step throughput, eager")[1]
    assert "| hf |" in report and "| lightly |" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the full mode would run")
def test_without_a_gpu_the_full_mode_refuses_in_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no CUDA device is visible; run with --cpu-smoke for the reduced CPU mode"
    ]
