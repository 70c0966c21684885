"""Run records: a JSON-lines metrics log, TensorBoard events, and progress on the terminal.

Only the main process writes. On a terminal a rich progress bar shows loss, lr and images/s;
otherwise (CI, log files) plain lines are printed every ``log_every`` steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    """Append-only ``metrics.jsonl`` plus TensorBoard scalars under ``tensorboard/``."""

    def __init__(self, output: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the checkpoint did not reach (they will be redone)."""
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"pretrain/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressDisplay:
    """A rich progress bar on a terminal, plain periodic lines elsewhere; silent on non-main processes."""

    def __init__(
        self, total_steps: int, start_step: int, enabled: bool, log_every: int, label: str = "pretrain"
    ) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.total = total_steps
        self.bar = None
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

    def update(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        status = f"epoch {epoch}  loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, status=status)
        elif step % self.log_every == 0 or step == self.total:
            print(f"step {step}/{self.total}  {status}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
