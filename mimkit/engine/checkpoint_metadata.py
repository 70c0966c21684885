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


def stored_config(path: str | Path) -> dict[str, Any] | None:
    """The config a mimkit checkpoint records (the run's config, with ``resolved_model``); ``None`` for anything
    else: a missing file, an authors' release, a file that is no safetensors file."""
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
