"""Run records: the metrics log and the trackers, progress on the terminal and a log file.

Only the main process writes. On a terminal a rich progress bar shows loss, lr and images/s; otherwise (CI, log
files) plain lines with a timestamp and an ETA are printed every ``log_every`` steps. The run's ``log.txt``
receives those lines and every message, timestamped, in both cases.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mimkit.engine.run_folder import METRICS_NAME
from mimkit.engine.trackers import open_tracker
from mimkit.engine.trackers.base import Tracker, TrackerContext, hwc_uint8


class MetricsLog:
    """A run's records: ``metrics.jsonl`` (always) and the backends of ``train.trackers``
    (:mod:`mimkit.engine.trackers`), TensorBoard scalars ``<tag>/<name>`` under ``tensorboard/`` by default.

    On resume (``resume_step``: the checkpoint's step) the records of later steps, which the run will redo, are
    dropped from the record files by an atomic rewrite, and TensorBoard hides its events after that step. A line
    that cannot be read (a write torn by a kill or a full disk) is dropped too and reported in :attr:`notes`.
    ``config`` (the run's resolved config) goes to the backends that show one.
    """

    def __init__(
        self,
        output: Path,
        enabled: bool,
        resume_step: int | None = None,
        tag: str = "pretrain",
        trackers: Iterable[str] = ("tensorboard",),
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = output / METRICS_NAME
        self.tag = tag
        self.trackers: list[Tracker] = []
        self.notes: list[str] = []
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        context = TrackerContext(output, resume_step)
        try:
            for name in dict.fromkeys(["jsonl", *trackers]):
                self.trackers.append(open_tracker(name, context))
                if config is not None:
                    self.trackers[-1].log_config(config)
        except BaseException:
            self.close(failed=True)
            raise
        self.notes = [note for tracker in self.trackers for note in tracker.notes]

    def write(self, record: Mapping[str, Any]) -> None:
        """Record the numbers of ``record`` (at least its ``step``) in every backend."""
        if not self.enabled:
            return
        scalars = {
            name: value
            for name, value in record.items()
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for tracker in self.trackers:
            tracker.log_scalars(record["step"], scalars, self.tag)

    def image(self, step: int, name: str, image: Any) -> None:
        """Show a picture (``(H, W, C)`` uint8 or ``(C, H, W)`` float in [0, 1]) as ``<tag>/<name>`` at ``step``."""
        if not self.enabled:
            return
        picture = hwc_uint8(image)
        for tracker in self.trackers:
            tracker.log_image(step, f"{self.tag}/{name}", picture)

    def close(self, failed: bool = False) -> None:
        """End every backend; ``failed``: the run stopped on an error (W&B and MLflow mark their run so)."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed)


def clock() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal, plain timestamped lines elsewhere, and the same lines and every
    message in ``log_path`` (appended); silent on non-main processes."""

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        enabled: bool,
        log_every: int,
        label: str = "pretrain",
        log_path: Path | None = None,
    ) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.total = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.bar = None
        self.log = log_path.open("a", encoding="utf-8") if enabled and log_path is not None else None
        if enabled and sys.stdout.isatty():
            self.bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("steps", total=total_steps, completed=start_step, status="")
            self.bar.start()

    def eta(self, step: int) -> str:
        """Time left at the pace of this invocation's steps so far."""
        done = step - self.start_step
        if done <= 0:
            return "?"
        return format_duration((self.total - step) * (time.perf_counter() - self.started) / done)

    def log_point(self, step: int) -> bool:
        """Whether ``step`` gets a plain progress line (every ``log_every`` steps, and the last)."""
        return step % self.log_every == 0 or step == self.total

    def update(
        self,
        step: int,
        epoch: int,
        loss: float,
        lr: float,
        images_per_s: float,
        timing: dict[str, float] | None = None,
    ) -> None:
        """Show a finished step; ``timing`` is its :class:`~mimkit.engine.step_timer.StepTimer` record."""
        if not self.enabled:
            return
        status = f"epoch {epoch}  loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.1f} img/s"
        if timing is not None:
            status += f"  data {timing['data_s']:.3f}s/step {timing['step_s']:.3f}s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, status=status)
        if self.log_point(step):
            line = f"{clock()}  step {step}/{self.total}  {status}  eta {self.eta(step)}"
            if self.bar is None:
                print(line, flush=True)
            self._log(line)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)
        self._log(f"{clock()}  {text}")

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.log is not None:
            self.log.close()
            self.log = None
