"""What a mimkit checkpoint records about its model, and the defaults a transfer run takes from it (no torch).

A fine-tuning, probing or kNN run from a mimkit checkpoint (pretraining or transfer) builds the checkpoint's model
for the input its weights were trained on unless the run's config says otherwise: the config's defaults become
the checkpoint's ``model.name`` and ``data.img_size``, ``in_chans``, ``mean`` and ``std`` (for video encoders also
``data.source: clips`` and ``num_frames``); the encoder is built from the configuration the checkpoint records
(``resolved_model``) with ``model.args`` on top (:func:`mimkit.eval.loading.resolved_encoder_config`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from mimkit.config_schema import ConfigError, to_dict
from mimkit.engine.checkpoint_metadata import stored_config
from mimkit.errors import CheckpointError
from mimkit.model_configs import parts
from mimkit.model_configs.registry import model_config

ENCODER_PARTS = (parts.ViTFields, parts.ConvViTFields, parts.SwinFields)
"""The configuration parts that shape an encoder."""


def recorded_model(record: dict[str, Any], path: str | Path) -> tuple[str, dict[str, Any]]:
    """The model name and resolved model configuration in a checkpoint's config ``record`` (pretraining and
    transfer checkpoints record both alike)."""
    model = record.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    resolved = record.get("resolved_model")
    if not isinstance(name, str) or not isinstance(resolved, dict):
        raise CheckpointError(
            f"{path} records no model name and resolved model configuration (a transfer checkpoint of an older "
            "mimkit?); use the pretraining checkpoint the run started from"
        )
    return name, resolved


def checkpoint_defaults(path: str, explicit: dict[str, Any], with_img_size: bool = True) -> dict[str, Any]:
    """The config values a transfer run from checkpoint ``path`` takes where ``explicit`` (its YAML file and
    ``key=value`` overrides) leaves them unset; prints them, with the encoder fields the checkpoint sets. Empty for
    a file that is not a mimkit checkpoint (an authors' release: the config names the model). An explicit other
    ``model.name`` is refused. ``with_img_size=False`` leaves the image size to the run (dense prediction works at
    its own resolution)."""
    if not Path(path).is_file():
        raise ConfigError(f"model.checkpoint {path}: file not found")
    record = stored_config(path)
    if record is None:
        return {}
    name, resolved = recorded_model(record, path)
    chosen = _section(explicit, "model").get("name", name)
    if chosen != name:
        raise ConfigError(
            f"model.name '{chosen}' is not the model of {path} ('{name}'): set model.name={name} or leave it out"
        )
    built = model_config(name, **resolved)
    data = {"img_size": built.img_size, "in_chans": built.in_chans} if with_img_size else {"in_chans": built.in_chans}
    data.update({k: v for k, v in _section(record, "data").items() if k in ("mean", "std")})
    if hasattr(built, "num_frames"):
        data.update(source="clips", num_frames=built.num_frames)
    defaults = {"model": {"name": name}, "data": data}
    taken = [f"{key}={value}" for key, value in _leaves(defaults) if not _is_set(explicit, key)]
    args = _section(_section(explicit, "model"), "args")
    shape = [f"{key}={value}" for key, value in encoder_shape(name, resolved).items() if key not in args]
    if taken or shape:
        print(f"from {path}: " + ", ".join(taken) + (f"; its encoder's {', '.join(shape)}" if shape else ""))
    return defaults


def encoder_shape(name: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """The fields of model ``name``'s encoder part (ViT, ConvViT or Swin) that ``resolved`` sets to other values
    than the registered configuration, besides the input fields every encoder has (size, channels, drop path)."""
    registered = model_config(name)
    encoder_parts = [c for c in type(registered).__mro__ if c in ENCODER_PARTS]
    common = {f.name for f in fields(parts.ImageFields)}
    names = [f.name for part in encoder_parts for f in fields(part) if f.name not in common]
    built, default = to_dict(model_config(name, **resolved)), to_dict(registered)
    return {key: built[key] for key in names if built[key] != default[key]}


def _section(tree: dict[str, Any], key: str) -> dict[str, Any]:
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every value in a nested dict that is not itself a dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _is_set(tree: dict[str, Any], dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True
