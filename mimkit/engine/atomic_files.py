"""Files replaced atomically: written beside their target, flushed to disk, then renamed over it, so a crash
mid-write leaves either the old file or the new one, never a partial one. Checkpoints, exports, ``config.yaml`` and
the metrics log's rewrite on resume are all written this way."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new empty file beside ``path``, named ``.NAME.<random>.tmp``. Its mode follows the user's umask like any
    other file's (``tempfile.mkstemp`` would make it 0600, and ``os.replace`` keeps that mode)."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), candidate
        except FileExistsError:
            continue


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, flush it to disk and rename it over ``path``: a crash
    mid-write leaves the previous file untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
