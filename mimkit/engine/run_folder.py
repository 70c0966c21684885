"""A run's output folder: one run per folder, one writer at a time, and a record of what the run was.

A folder *holds a run* once any of :data:`RUN_ENTRIES` exists in it. Starting a new run there is refused (the
user resumes it or starts over explicitly with ``overwrite``), so an earlier run is never truncated or mixed
with another by accident. While a run writes, its main process holds an exclusive ``flock`` on
:data:`LOCK_NAME`; a second process on the same folder is refused, naming the holder's PID. The kernel drops the
lock when the holder exits, even on ``kill -9``, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mimkit.engine.atomic_files import atomic_write
from mimkit.errors import MimkitError

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.yaml"
LOG_NAME = "log.txt"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.safetensors"
LAST_SHARDED = "last.dcp"
"""An FSDP run's latest sharded checkpoint: a link to its ``step_NNNNNNNN.dcp`` folder."""
CSV_METRICS_NAME = "metrics.csv"
TRACKER_RUNS_NAME = "trackers.json"
"""The ids of a run's W&B and MLflow runs, so that a resumed run logs into the same tracker runs."""
MLFLOW_FOLDER = "mlruns"
TRACKER_ENTRIES = (CSV_METRICS_NAME, "wandb", MLFLOW_FOLDER, TRACKER_RUNS_NAME)
"""What the optional trackers write (``mimkit.engine.trackers``): the CSV table, the W&B folder (W&B names it),
the default MLflow file store and the ids of the tracker runs."""
RUN_ENTRIES = (CHECKPOINTS, METRICS_NAME, "tensorboard", "reconstructions", CONFIG_NAME, LOG_NAME, *TRACKER_ENTRIES)
"""What a run writes into its folder; ``overwrite`` removes exactly these (other files are left alone)."""
TEMPORARY_PATTERNS = (
    f".{METRICS_NAME}.*.tmp",
    f".{CONFIG_NAME}.*.tmp",
    f".{CSV_METRICS_NAME}.*.tmp",
    f".{TRACKER_RUNS_NAME}.*.tmp",
    f"{CHECKPOINTS}/.*.safetensors.*.tmp",
    f"{CHECKPOINTS}/.*.dcp*.tmp",
)
"""Temporary files of the run's atomic writes (``checkpoints/.last.safetensors.<random>.tmp``) and sharded
checkpoint folders (``checkpoints/.step_NNNNNNNN.dcp.tmp``): stale once their writer is gone."""


class RunFolder:
    """The output folder of one run (``path``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.last_checkpoint = self.checkpoints / LAST_CHECKPOINT
        self.last_sharded = self.checkpoints / LAST_SHARDED
        self.config_path = self.path / CONFIG_NAME
        self.log_path = self.path / LOG_NAME
        self._lock_fd: int | None = None
        self.removed_temporaries: list[Path] = []
        """Stale temporary files the last :meth:`session` removed."""

    def holds_run(self) -> bool:
        return any((self.path / entry).exists() for entry in RUN_ENTRIES)

    def check_start(self, resume_from: Path | None, overwrite: bool) -> None:
        """Refuse to start a run over an existing one (read-only; :meth:`session` checks again under the lock):
        a new run, or a resume of a checkpoint from elsewhere (``resume_from``), goes to a folder without a run.
        ``overwrite`` is the explicit way to start over; it cannot be combined with resuming."""
        if resume_from is not None and overwrite:
            raise MimkitError("--overwrite starts the run over and --resume continues it: give one of them")
        if self.path.exists() and not self.path.is_dir():
            raise MimkitError(f"output {self.path} is a file, not a folder; choose another --output")
        if overwrite or not self.holds_run():
            return
        if resume_from is None:
            raise MimkitError(
                f"{self.path} already holds a run; continue it with --resume, start it over with --overwrite "
                "(deletes its checkpoints and logs), or choose another --output"
            )
        if resume_from.resolve().parent != self.checkpoints.resolve():
            raise MimkitError(
                f"{self.path} holds another run than {resume_from}'s; continue from that checkpoint into a new "
                "--output (or continue this folder's own run with --resume)"
            )

    @contextmanager
    def session(self, resume_from: Path | None, overwrite: bool, config: dict[str, Any]) -> Iterator[RunFolder]:
        """Lock the folder for the run's duration, then (under the lock) refuse or clear an earlier run, remove
        stale temporary files of killed writes and write the run's resolved ``config.yaml``."""
        self._lock()
        try:
            self.check_start(resume_from, overwrite)
            if overwrite:
                self._remove_run()
            self.checkpoints.mkdir(exist_ok=True)
            self.removed_temporaries = self._remove_stale_temporaries()
            atomic_write(self.config_path, yaml.safe_dump(config, sort_keys=False).encode("utf-8"))
            yield self
        finally:
            self._unlock()

    def _lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise MimkitError(
                f"cannot write to the output folder {self.path}: {err.strerror}; choose another --output"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MimkitError(
                f"{self.path} is in use by another mimkit run (PID {holder}); wait for it to end or choose another "
                "--output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

    def _remove_run(self) -> None:
        for entry in RUN_ENTRIES:
            target = self.path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def _remove_stale_temporaries(self) -> list[Path]:
        stale = [path for pattern in TEMPORARY_PATTERNS for path in self.path.glob(pattern)]
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return stale
