"""The encoder of any pretraining model, from a mimkit checkpoint, an authors' checkpoint, or at random."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.engine.checkpoint_metadata import FORMAT, stored_config
from mimkit.errors import CheckpointError, MimkitError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.eval.classifier import ENCODER_PREFIX
from mimkit.model_configs.registry import model_config
from mimkit.models import create_encoder, create_model
from mimkit.official import (
    load_convmae_weights,
    load_localmim_weights,
    load_mae_weights,
    load_mixmim_weights,
    read_official_checkpoint,
)

OFFICIAL_LOADERS = {
    "mae_": load_mae_weights,
    "convmae_": load_convmae_weights,
    "mixmae_swin_": load_mixmim_weights,
    "localmim_vit_": load_localmim_weights,
}
"""Which key mapping reads an authors' checkpoint, by the prefix of the mimkit model name."""


def is_mimkit_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def resolved_encoder_config(
    model_name: str, model_args: dict[str, Any] | None = None, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """The configuration :func:`load_encoder` builds the encoder from: ``model_name``'s with ``model_args`` on
    top of, for a mimkit checkpoint, the one it records (which must be of the same model)."""
    record = stored_config(checkpoint) if checkpoint is not None else None
    recorded: dict[str, Any] = {}
    if record is not None:
        name, recorded = recorded_model(record, checkpoint)
        if name != model_name:
            raise CheckpointError(f"{checkpoint} holds a '{name}' model, not '{model_name}': set model.name={name}")
    return to_dict(model_config(model_name, **{**recorded, **(model_args or {})}))


def load_encoder(
    model_name: str, model_args: dict[str, Any] | None = None, checkpoint: str | Path | None = None
) -> nn.Module:
    """The encoder of pretraining model ``model_name`` built with ``model_args``.

    ``checkpoint``: a mimkit checkpoint of that model, pretraining or transfer (its recorded configuration is used,
    with ``model_args`` on top, e.g. a drop-path rate or image size), an authors' released checkpoint (``.pth`` or
    ``.safetensors``, read through the key mapping of the model's family), or ``None`` for a random init.
    """
    model_args = dict(model_args or {})
    if checkpoint is None:
        return create_encoder(model_name, **model_args)
    if is_mimkit_checkpoint(checkpoint):
        encoder = create_encoder(model_name, **resolved_encoder_config(model_name, model_args, checkpoint))
        stored = load_checkpoint(checkpoint)
        load_model_state(encoder, encoder_weights(stored.model, checkpoint), checkpoint)
        return encoder
    loader = next((load for prefix, load in OFFICIAL_LOADERS.items() if model_name.startswith(prefix)), None)
    if loader is None:
        raise MimkitError(
            f"{checkpoint} is not a mimkit checkpoint, and no authors' key mapping is known for '{model_name}' "
            f"(known families: {', '.join(OFFICIAL_LOADERS)})"
        )
    model = create_model(model_name, **model_args)
    loader(model, read_official_checkpoint(checkpoint), encoder_only=True)
    return model.encoder_module()


def encoder_weights(state_dict: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a pretraining model's state dict, without the prefix."""
    weights = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    if not weights:
        raise MimkitError(f"{source} holds no encoder weights (no 'encoder.*' keys)")
    return weights
