"""One rule for every file a command writes: never over one of its own inputs, nor over a mimkit checkpoint."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mimkit.engine.checkpoint_metadata import stored_config
from mimkit.errors import MimkitError


def check_output(
    output: str | Path, inputs: Iterable[str | Path | None], option: str = "--output", replace: bool = True
) -> Path:
    """``output`` as a path, once it is known to be none of ``inputs`` (``None`` entries are skipped), no folder
    and no mimkit checkpoint, nor (``replace=False``, the commands that take ``--overwrite``) any existing file;
    otherwise a :class:`MimkitError` that names the fix."""
    output = Path(output)
    if output.is_dir():
        raise MimkitError(f"{option} {output} is a folder; name the file to write")
    for item in inputs:
        if item is not None and output.exists() and Path(item).exists() and os.path.samefile(output, item):
            raise MimkitError(f"{option} {output} is this command's input {item}; write to another file")
    if stored_config(output) is not None:
        raise MimkitError(
            f"{option} {output} is a mimkit checkpoint; write to another file (delete it first to replace it)"
        )
    if not replace and output.exists():
        raise MimkitError(f"{option} {output} exists; add --overwrite to replace it, or choose another file")
    return output


def check_new_folder(output: str | Path, option: str = "--output") -> Path:
    """``output`` as a path, once it is known to be a folder that does not exist yet or is empty (so nothing in it is
    replaced or mixed with what a command writes); otherwise a :class:`MimkitError` that names the fix."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MimkitError(f"{option} {output} is a file; name a new folder to write")
    if output.is_dir() and any(output.iterdir()):
        raise MimkitError(f"{option} {output} is a folder that is not empty; name a new folder (or empty this one)")
    return output
