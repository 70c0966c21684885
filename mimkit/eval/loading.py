"""The encoder of any pretraining model, from a mimkit checkpoint, an authors' checkpoint, or at random."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint_metadata import stored_config
from mimkit.errors import CheckpointError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.model_configs.registry import model_config
from mimkit.models import create_encoder
from mimkit.pretrained import encoder_weights

__all__ = ["encoder_weights", "load_encoder", "resolved_encoder_config"]
"""``encoder_weights`` lives in :mod:`mimkit.pretrained`; it stays importable here for its earlier callers."""


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
    ``.safetensors``, read through the key mapping of the model's family), or ``None`` for a random init
    (:func:`mimkit.models.create_encoder`, strict).
    """
    return create_encoder(model_name, checkpoint, **(model_args or {}))
