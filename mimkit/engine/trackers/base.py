"""What every tracker backend shares: the interface the training loops log through, what a backend knows about
the run it logs, and the record-file rewrite a resume does."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.run_folder import TRACKER_RUNS_NAME


class Tracker:
    """One place a run's records go. A backend overrides what it can show; the rest does nothing.

    ``scalars`` are plain numbers named without the run's tag (``loss``, ``loss_rec``, ``lr``, ``val_top1``, ...);
    a backend that names metrics globally files them as ``<tag>/<name>`` (``pretrain/loss``, ``finetune/val_top1``).
    Images arrive as ``(H, W, C)`` uint8 arrays (C = 1 or 3), named with their tag (``pretrain/reconstructions``).
    """

    notes: list[str]
    """Lines for the run's start (e.g. what a resume dropped from a record file)."""

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        """Record the numbers of optimizer step ``step``."""

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Record a picture at ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved config (once, at the start of each invocation)."""

    def close(self, failed: bool = False) -> None:
        """Flush and end; ``failed``: the run stopped on an error."""


@dataclass
class TrackerContext:
    """What a backend knows about the run: its folder, the step a resume continues after (None: a new run) and
    the run's name (the folder's)."""

    output: Path
    resume_step: int | None

    @property
    def name(self) -> str:
        return self.output.resolve().name

    @property
    def _runs_path(self) -> Path:
        return self.output / TRACKER_RUNS_NAME

    def remembered_run(self, backend: str) -> str | None:
        """The id of the tracker run an earlier invocation of this run logged to with ``backend`` (resumes only; an
        unreadable record starts a new tracker run)."""
        if self.resume_step is None or not self._runs_path.is_file():
            return None
        try:
            runs = json.loads(self._runs_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        run_id = runs.get(backend) if isinstance(runs, dict) else None
        return run_id if isinstance(run_id, str) and run_id else None

    def remember_run(self, backend: str, run_id: str) -> None:
        runs: dict[str, str] = {}
        if self._runs_path.is_file():
            try:
                runs = json.loads(self._runs_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                runs = {}
        runs = {**(runs if isinstance(runs, dict) else {}), backend: run_id}
        atomic_write(self._runs_path, (json.dumps(runs, indent=2) + "\n").encode("utf-8"))


def hwc_uint8(image: Any) -> np.ndarray:
    """An image as ``(H, W, C)`` uint8: from ``(H, W, C)`` uint8 as given, or from a ``(C, H, W)`` float tensor or
    array in [0, 1] (values outside are clipped). C must be 1 or 3."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.dtype == np.uint8:
        hwc = array
    else:
        if array.ndim != 3 or not np.isfinite(array).all():
            raise ValueError(f"expected a finite (C, H, W) image in [0, 1], got shape {array.shape}")
        hwc = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    if hwc.ndim != 3 or hwc.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, C) image with 1 or 3 channels, got shape {hwc.shape}")
    return hwc


def keep_records_until(path: Path, step: int, step_of: Callable[[str], int | None], header_lines: int = 0) -> int:
    """Rewrite the record file ``path`` (atomically) keeping its first ``header_lines`` lines and the records of
    steps up to ``step`` (``step_of`` reads a line's step; None: unreadable). A last line without its newline is a
    write torn by a kill or a full disk. Returns how many unreadable lines were dropped."""
    complete, _, torn_tail = path.read_text(encoding="utf-8", errors="replace").rpartition("\n")
    lines = complete.split("\n") if complete else []
    header, records = lines[:header_lines], lines[header_lines:]
    kept, torn = [], 1 if torn_tail.strip() else 0
    for line in records:
        if not line.strip():
            continue
        line_step = step_of(line)
        if line_step is None:
            torn += 1
        elif line_step <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in [*header, *kept]).encode("utf-8"))
    return torn


def torn_note(path: Path, torn: int) -> list[str]:
    """The start-up warning about ``torn`` dropped lines of ``path`` (none when nothing was dropped)."""
    if not torn:
        return []
    return [f"warning: {path}: dropped {torn} unreadable line(s) (a write torn by a kill or a full disk)"]
