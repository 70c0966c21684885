"""The run lifecycle as a user drives it: ``mimkit pretrain`` in subprocesses, run twice into one folder, killed
with SIGKILL at random moments and resumed with a bare ``--resume``, resumed with another batch, resumed over a
torn metrics line. Losses are compared step by step with an uninterrupted run: resuming is bit-exact.

The kill moments are drawn from a seed printed in every assertion message (set ``MIMKIT_LIFECYCLE_SEED`` to
replay one)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mimkit.engine.run_folder import LOCK_NAME
from tests.conftest import REPO_ROOT, tiny_overrides

SEED = int(os.environ.get("MIMKIT_LIFECYCLE_SEED", time.time_ns() % 10_000))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
STEPS = 12


def _args(output: Path, *extra: str) -> list[str]:
    """A tiny run of 3 epochs of 4 steps with a checkpoint after every step (so kills land mid-epoch)."""
    return ["pretrain", *tiny_overrides(output, "train.epochs=3", "train.checkpoint_every=1", *extra)]


def _mimkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mimkit.cli", *map(str, args)]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _start(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mimkit.cli", *map(str, args)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)


def _last_step(output: Path) -> int:
    steps = [0]
    if (output / "metrics.jsonl").exists():
        for line in (output / "metrics.jsonl").read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except json.JSONDecodeError:
                pass
    return steps[-1]


def _kill_at(process: subprocess.Popen, output: Path, step: int, delay: float) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after it logged ``step``; whether the kill landed before it ended."""
    deadline = time.monotonic() + 60
    while _last_step(output) < step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=30) == -signal.SIGKILL


def _lock_holder(output: Path) -> str | None:
    """The PID written in the run's lock file if a process holds the lock, else None."""
    with open(output / LOCK_NAME) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip()
    return None


def _losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run."""
    output = tmp_path_factory.mktemp("lifecycle") / "reference"
    result = _mimkit(*_args(output))
    assert result.returncode == 0, result.stderr
    assert len(_losses(output)) == STEPS
    return output


def test_a_second_run_into_the_folder_is_refused_and_leaves_the_first_intact(reference):
    before = _files(reference)
    refused = _mimkit(*_args(reference))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert _files(reference) == before


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_losses(reference, tmp_path):
    rng = random.Random(SEED)
    note = f"(MIMKIT_LIFECYCLE_SEED={SEED})"
    output = tmp_path / "killed"
    first_kill = rng.randint(2, 5)
    first = _start(*_args(output))
    deadline = time.monotonic() + 60
    while _last_step(output) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _lock_holder(output) == str(first.pid), note  # the running process holds the folder
    landed = [_kill_at(first, output, first_kill, rng.uniform(0, 0.05))]
    second = _start("pretrain", "--output", output, "--resume")
    landed.append(_kill_at(second, output, rng.randint(first_kill + 1, STEPS - 4), rng.uniform(0, 0.05)))
    assert any(landed), f"no kill landed before the run ended {note}"
    final = _mimkit("pretrain", "--output", output, "--resume")
    assert final.returncode == 0, f"{final.stderr} {note}"
    assert _losses(output) == _losses(reference), note
    assert not [p.name for p in output.rglob(".*.tmp")], note  # temporaries of killed writes are gone
    assert _lock_holder(output) is None


def test_a_resume_with_another_batch_is_refused_and_a_torn_metrics_line_is_tolerated(reference, tmp_path):
    output = tmp_path / "stopped"
    assert _mimkit(*_args(output, "train.max_steps=3")).returncode == 0  # step 3 of 4: mid-epoch
    changed = _mimkit("pretrain", "--output", output, "--resume", "--allow-changes", "train.batch_size=16", timeout=60)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "cannot resume" in changed.stderr and "mid-epoch" in changed.stderr
    with (output / "metrics.jsonl").open("a") as log:
        log.write('{"step": 4, "epoch": 0, "loss": 1.0')  # half a line: the disk filled up
    resumed = _mimkit("pretrain", "--output", output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "dropped 1 unreadable line(s)" in resumed.stdout
    assert _losses(output) == _losses(reference)
