"""Run records: a JSON-lines metrics log, TensorBoard events, progress on the terminal and a log file.

Only the main process writes. On a terminal a rich progress bar shows loss, lr and images/s; otherwise (CI, log
files) plain lines with a timestamp and an ETA are printed every ``log_every`` steps. The run's ``log.txt``
receives those lines and every message, timestamped, in both cases.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.run_folder import METRICS_NAME


class MetricsLog:
    """Append-only ``metrics.jsonl`` plus TensorBoard scalars ``<tag>/<name>`` under ``tensorboard/``.

    On resume (``resume_step``: the checkpoint's step) the records of later steps, which the run will redo, are
    dropped by an atomic rewrite, and TensorBoard hides its events after that step. A line that cannot be read (a
    write torn by a kill or a full disk) is dropped too and reported in :attr:`notes`.
    """

    def __init__(self, output: Path, enabled: bool, resume_step: int | None = None, tag: str = "pretrain") -> None:
        self.enabled = enabled
        self.path = output / METRICS_NAME
        self.tag = tag
        self.writer = None
        self.notes: list[str] = []
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter

        # Records are written at the step reached by the update, so the checkpoint's own step stays.
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=purge_step)

    def _truncate_after(self, step: int) -> None:
        kept, torn = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        if torn:
            self.notes.append(
                f"warning: {self.path}: dropped {torn} unreadable line(s) (a write torn by a kill or a full disk)"
            )
        atomic_write(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{self.tag}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
