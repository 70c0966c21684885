"""Two CPU processes (torchrun, gloo) give the same run as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mimkit.data.sources import FASHION_MNIST_DIR
from mimkit.engine.checkpoint import load_checkpoint
from tests.conftest import REPO_ROOT, tiny_overrides
from tests.transfer_files import write_labelled_images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str]) -> str:
    """Run ``command``, which must succeed; returns what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _run_two_processes(*cli_args: str, program: tuple[str, ...] = ("-m", "mimkit.cli")) -> str:
    """``mimkit <cli_args>`` (or another ``program``, e.g. a script) under torchrun with two CPU processes; returns
    what they printed."""
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            *program,
            *cli_args,
        ]
    )


def _losses(output):
    """The training losses of a run's metrics log (validation records carry none)."""
    records = map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
    return [record["loss"] for record in records if "loss" in record]


def test_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "mimkit.cli", "pretrain", *tiny_overrides(one, "train.batch_size=8")])
    printed = _run_two_processes("pretrain", *tiny_overrides(two, "train.batch_size=4"))
    assert printed.count("done: 8 steps") == 1  # the main process reports the run, once
    assert len(_losses(two)) == 8
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    single = load_checkpoint(one / "checkpoints" / "last.safetensors").model
    double = load_checkpoint(two / "checkpoints" / "last.safetensors").model
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-5


def _check_two_processes_equal_one(command: str, output, common: list[str], steps: int) -> None:
    """``mimkit <command>`` with 2 processes x 4 images matches 1 process x 8 images: ``steps`` equal losses, and
    every tensor of the last checkpoint."""
    one, two = output / "one", output / "two"
    _run([sys.executable, "-m", "mimkit.cli", command, "--output", str(one), *common, "train.batch_size=8"])
    printed = _run_two_processes(command, "--output", str(two), *common, "train.batch_size=4")
    assert printed.count("done: ") == 1
    losses = [_losses(one), _losses(two)]
    assert len(losses[1]) == steps
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    single = load_checkpoint(one / "checkpoints" / "last.safetensors").model
    double = load_checkpoint(two / "checkpoints" / "last.safetensors").model
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-5


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")
def test_two_process_finetuning_equals_one_process(tmp_path):
    """DDP fine-tuning: 2 processes x 4 images match 1 process x 8 images (losses, weights, accuracy)."""
    common = [
        "model.args.patch_size=7",
        "model.args.embed_dim=32",
        "model.args.depth=2",
        "model.args.num_heads=2",
        "data.train_limit=64",
        "data.val_limit=40",
        "data.num_workers=0",
        "augment.mixup=0",
        "augment.cutmix=0",
        "train.drop_path=0",
        "train.epochs=1",
    ]
    _check_two_processes_equal_one("finetune", tmp_path, common, steps=8)


def test_two_process_linear_probe_equals_one_process(tmp_path):
    """DDP probing: the head's gradients are averaged and the probe's BatchNorm sees the global batch, so 2 processes
    x 4 images match 1 process x 8 images (losses, the head and its BatchNorm statistics)."""
    common = [
        *write_labelled_images(tmp_path / "images"),
        "model.args.patch_size=4",
        "model.args.embed_dim=32",
        "model.args.depth=2",
        "model.args.num_heads=2",
        "data.img_size=16",
        "data.num_workers=0",
        "train.epochs=1",
    ]
    _check_two_processes_equal_one("linprobe", tmp_path, common, steps=4)


def test_two_processes_stopped_and_resumed_equal_an_uninterrupted_run(tmp_path):
    """Two gloo processes stopped mid-epoch by max_steps, then resumed with a bare ``--resume``: the same losses
    and weights as two processes that ran through."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run_two_processes("pretrain", *tiny_overrides(whole, "train.batch_size=4"))
    _run_two_processes("pretrain", *tiny_overrides(split, "train.batch_size=4", "train.max_steps=3"))
    assert len(_losses(split)) == 3
    _run_two_processes("pretrain", "--output", str(split), "--resume")
    assert _losses(split) == _losses(whole)
    resumed = load_checkpoint(split / "checkpoints" / "last.safetensors").model
    uninterrupted = load_checkpoint(whole / "checkpoints" / "last.safetensors").model
    assert all(resumed[k].equal(uninterrupted[k]) for k in uninterrupted)
