"""The Hugging Face Hub folder layout of a mimkit pretraining model: ``config.json``, ``model.safetensors`` and a
``README.md`` model card, the files ``huggingface_hub``'s ``ModelHubMixin`` pushes and downloads.

``config.json`` holds what rebuilds the model (``model_name`` and its resolved ``model_config``), the mimkit version
that wrote it and, for weights from a mimkit training run, the run's recorded config and position (``run``).
Writing refuses NaN or infinite weights before anything is written; reading checks every part and raises one
:class:`~mimkit.errors.CheckpointError` naming the file for a malformed ``config.json``, an unknown model, or
weights that are no safetensors file or hold NaN or infinity. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save

from mimkit import __version__
from mimkit.config_schema import ConfigError
from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.checkpoint import first_non_finite
from mimkit.errors import CheckpointError, NonFiniteError
from mimkit.model_configs.registry import model_config

HUB_FORMAT = "mimkit-hub/1"
"""The ``format`` entry of every ``config.json`` mimkit writes."""
CONFIG_NAME = constants.CONFIG_NAME
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE
CARD_NAME = constants.REPOCARD_NAME
REQUIRED_ENTRIES = {"format": "string", "mimkit_version": "string", "model_name": "string", "model_config": "object"}
"""What every ``config.json`` holds, and the JSON type of each; ``run`` (an object) is optional."""
JSON_TYPES = {"string": str, "object": dict}


def hub_config(model_name: str, resolved: dict[str, Any], run: dict[str, Any] | None) -> dict[str, Any]:
    """The ``config.json`` of a model: its name and resolved configuration, and the run that trained it (if known)."""
    config = {"format": HUB_FORMAT, "mimkit_version": __version__, "model_name": model_name, "model_config": resolved}
    return config if run is None else {**config, "run": run}


def write_weights_and_config(folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (the model's ``state_dict``) and ``config.json`` into ``folder``; nothing is
    written if a weight is NaN or infinite."""
    bad = first_non_finite(state)
    if bad is not None:
        raise NonFiniteError(f"refusing to save to {folder}: tensor '{bad}' holds NaN or infinite values")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    atomic_write(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, (json.dumps(config, indent=2, allow_nan=False) + "\n").encode())


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{file} is not a readable JSON file ({err})") from err
    if not isinstance(config, dict) or config.get("format") != HUB_FORMAT:
        raise CheckpointError(
            f"{file} is not a mimkit model config (no \"format\": \"{HUB_FORMAT}\" entry); is {folder} a model saved "
            "by mimkit's save_pretrained?"
        )
    for key, kind in {**REQUIRED_ENTRIES, "run": "object"}.items():
        if (key in config or key in REQUIRED_ENTRIES) and not isinstance(config.get(key), JSON_TYPES[kind]):
            raise CheckpointError(f"{file} is malformed: '{key}' must be a JSON {kind}")
    try:
        model_config(config["model_name"], **config["model_config"])
    except ConfigError as err:
        raise CheckpointError(f"{file} describes no model this mimkit builds: {err}") from err
    return config


def read_hub_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked ``config.json`` and weights of a model folder written by :func:`write_weights_and_config`."""
    folder = Path(folder)
    config = _read_config(folder)
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}; the folder is incomplete")
    return config, load_weights(file)


def finite_weights(source: str | Path, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights``, refused where a tensor holds NaN or infinite values (``source`` is named in the error)."""
    bad = first_non_finite(weights)
    if bad is not None:
        raise CheckpointError(f"{source} holds NaN or infinite values in tensor '{bad}'; refusing to load it")
    return weights


def load_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a Hub folder's weights, an export), refused where damaged or non-finite."""
    try:
        weights = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a damaged header or data
        raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
    return finite_weights(file, weights)
