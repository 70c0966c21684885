"""What a mimkit checkpoint says about itself, read from its safetensors metadata alone: no tensor is read and torch
is not imported, so configs can be completed from a checkpoint before the heavy modules load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from mimkit.errors import CheckpointError

FORMAT = "mimkit-checkpoint/1"
"""The ``format`` metadata entry of every mimkit checkpoint."""


SHARDED_FORMAT = "mimkit-sharded-checkpoint/1"
"""The ``format`` entry of a sharded checkpoint's :data:`SHARDED_METADATA`."""
SHARDED_METADATA = "mimkit.json"
"""The file of a sharded checkpoint folder that holds the metadata entries a single-file checkpoint keeps in its
safetensors header (``format``, ``config``, ``position``, ``optimizer_param_groups``: JSON strings)."""


def sharded_metadata(path: str | Path) -> dict[str, str]:
    """The metadata entries of the sharded checkpoint folder ``path`` (checked: a JSON object of strings, in the
    sharded format)."""
    file = Path(path) / SHARDED_METADATA
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} is not a readable sharded mimkit checkpoint ({file.name}: {err})") from err
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{file} is malformed: expected a JSON object of strings")
    if metadata.get("format") != SHARDED_FORMAT:
        raise CheckpointError(f"{path} is not a sharded mimkit checkpoint (format {metadata.get('format')!r:.60})")
    return metadata


def stored_config(path: str | Path) -> dict[str, Any] | None:
    """The config a mimkit checkpoint (a file, or a sharded checkpoint's folder) records (the run's config, with
    ``resolved_model``); ``None`` for anything else: a missing file, an authors' release, a file that is no
    safetensors file."""
    if Path(path).is_dir():
        metadata = {**sharded_metadata(path), "format": FORMAT}
    else:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
        except (OSError, SafetensorError):
            return None
    if metadata.get("format") != FORMAT:
        return None
    try:
        config = json.loads(metadata["config"])
    except (KeyError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} is a mimkit checkpoint without a readable config ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is a mimkit checkpoint whose config is not a JSON object")
    return config
