"""Periodic checkpoints kept besides ``last.safetensors``.

Each checkpoint a run writes also stays as ``step_NNNNNNNN.safetensors`` beside ``last``: a hard link to the file
just written (no copy and no extra space until ``last`` is replaced; a copy where the file system has no hard
links). Only the ``keep`` most recently written of them are kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PERIODIC_PREFIX = "step_"


def periodic_name(step: int) -> str:
    return f"{PERIODIC_PREFIX}{step:08d}.safetensors"


def keep_checkpoint(last: Path, step: int, keep: int) -> Path | None:
    """Keep the checkpoint just written to ``last`` as ``step_<step>.safetensors``, then delete all but the
    ``keep`` most recently written periodic checkpoints. Returns the kept file (``None`` when ``keep`` is 0)."""
    if keep < 1:
        return None
    kept = last.with_name(periodic_name(step))
    kept.unlink(missing_ok=True)
    try:
        os.link(last, kept)
    except OSError:
        tmp = kept.with_name(f".{kept.name}.copy.tmp")
        shutil.copyfile(last, tmp)
        os.replace(tmp, kept)
    periodic = sorted(
        last.parent.glob(f"{PERIODIC_PREFIX}*.safetensors"), key=lambda p: (p.stat().st_mtime_ns, p.name)
    )
    for old in periodic[:-keep]:
        if old != kept:
            old.unlink(missing_ok=True)
    return kept
