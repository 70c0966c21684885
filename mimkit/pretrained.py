"""Pretrained weights from any file mimkit reads, without executing code.

:func:`read_stored` tells what a file or folder holds (a :class:`StoredModel`): a mimkit checkpoint (pretraining,
fine-tuning or probe; verified by :func:`mimkit.engine.checkpoint.load_checkpoint`), an encoder written by
``mimkit export``, a model folder in the Hugging Face Hub layout (``save_pretrained``, :mod:`mimkit.hub_folder`), or
an authors' released checkpoint read through its family's key mapping (:mod:`mimkit.official`). Its weights are named
as in the model that wrote them, the encoder's as ``encoder.*``; every file but an authors' release records its
model's name and resolved configuration, which the model is rebuilt from.

:meth:`StoredModel.load_into` loads the weights strictly by default: a missing or unexpected tensor is a
:class:`~mimkit.errors.CheckpointError` naming it; ``strict=False`` loads what fits and returns (and warns with) a
:class:`~mimkit.engine.checkpoint_checks.LoadReport` of the rest.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.checkpoint_checks import LoadReport, load_model_state
from mimkit.engine.checkpoint_metadata import FORMAT, SHARDED_METADATA
from mimkit.errors import CheckpointError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.eval.classifier import ENCODER_PREFIX
from mimkit.hub_folder import CONFIG_NAME, finite_weights, load_weights, read_hub_folder
from mimkit.model_configs.registry import model_class, model_config
from mimkit.official import (
    convert_convmae_state_dict,
    convert_localmim_state_dict,
    convert_mae_state_dict,
    convert_mixmim_state_dict,
    read_official_checkpoint,
)

OFFICIAL_CONVERTERS = {
    "mae_": convert_mae_state_dict,
    "convmae_": convert_convmae_state_dict,
    "mixmae_swin_": convert_mixmim_state_dict,
    "localmim_vit_": convert_localmim_state_dict,
}
"""Which key mapping renames an authors' checkpoint, by the prefix of the mimkit model name."""

STRICT_HINT = "; strict=False loads the tensors that fit and reports the rest"


@dataclass
class StoredModel:
    """What a file of weights holds."""

    source: Path
    kind: str
    """``pretraining``, ``finetune`` or ``linprobe`` (a mimkit checkpoint, or a ``pretraining`` model folder),
    ``encoder`` (``mimkit export``) or ``authors`` (a released checkpoint)."""
    name: str | None
    """The mimkit model the weights belong to (``None`` for an authors' release: the caller names it)."""
    config: dict[str, Any]
    """The model's resolved configuration as recorded (empty for an authors' release)."""
    weights: dict[str, torch.Tensor]
    run: dict[str, Any] | None = None
    """For weights of a mimkit run: its recorded ``config`` and the ``step`` and ``epoch`` it had reached."""

    def model_args(self, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The configuration to build model ``name`` with: the recorded one with ``overrides`` on top. The weights
        must be of that model."""
        if self.name is not None and self.name != name:
            raise CheckpointError(f"{self.source} holds a '{self.name}' model, not '{name}'; name '{self.name}'")
        return {**self.config, **overrides}

    def encoder_weights(self) -> dict[str, torch.Tensor]:
        """The ``encoder.*`` tensors, without the prefix."""
        return encoder_weights(self.weights, self.source)

    def load_into(self, module: nn.Module, strict: bool = True, encoder: bool = False) -> LoadReport:
        """Load the weights (``encoder``: the encoder's alone) into ``module``; the report of what was left out
        becomes ``module.load_report``, and the run ``module.training_run``."""
        weights = self.encoder_weights() if encoder else self.weights
        report = load_model_state(module, weights, self.source, strict, STRICT_HINT)
        if not report.complete:
            warnings.warn(f"{self.source} loaded into {type(module).__name__} with {report}", stacklevel=3)
        module.load_report = report
        module.training_run = self.run
        return report


def encoder_weights(state_dict: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a pretraining model's state dict, without the prefix."""
    weights = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    if not weights:
        raise CheckpointError(f"{source} holds no encoder weights (no 'encoder.*' keys)")
    return weights


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata of a safetensors file; ``None`` for a file of another format (e.g. an authors' ``.pth``).
    A damaged file named ``.safetensors`` is refused."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for what is not its format
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
        return None


def _read_mimkit_checkpoint(path: Path) -> StoredModel:
    checkpoint = load_checkpoint(path)
    record = checkpoint.config
    if "last_eval" in record:
        raise CheckpointError(
            f"{path} is a detection or segmentation checkpoint; models load from pretraining, fine-tuning and probe "
            "checkpoints (the pretraining checkpoint that run started from holds its encoder)"
        )
    name, resolved = recorded_model(record, path)
    run = {
        "config": {k: v for k, v in record.items() if k != "resolved_model"},
        "step": checkpoint.position.step,
        "epoch": checkpoint.position.epoch,
    }
    return StoredModel(path, record.get("protocol", "pretraining"), name, resolved, checkpoint.model, run)


def _read_export(path: Path, metadata: dict[str, str]) -> StoredModel:
    try:
        resolved = json.loads(metadata["resolved_model"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} is an encoder exported by an older mimkit (its configuration is not recorded); export it again "
            "from its checkpoint with `mimkit export`"
        ) from err
    return StoredModel(path, "encoder", metadata["mimkit_model"], resolved, load_weights(path))


def _read_authors(path: Path, name: str | None) -> StoredModel:
    if name is None:
        raise CheckpointError(
            f"{path} is not a mimkit checkpoint, so it does not say which model it holds; name it, e.g. "
            f"mimkit.create_model('mae_vit_base_patch16', pretrained='{path}')"
        )
    convert = next((convert for prefix, convert in OFFICIAL_CONVERTERS.items() if name.startswith(prefix)), None)
    if convert is None:
        raise CheckpointError(
            f"{path} is not a mimkit checkpoint, and no authors' key mapping is known for '{name}' "
            f"(known families: {', '.join(OFFICIAL_CONVERTERS)})"
        )
    try:
        weights = convert(read_official_checkpoint(path))
    except (KeyError, ValueError) as err:  # unreadable, unsafe, or keys the mapping does not know
        raise CheckpointError(f"{path} is not a '{name}' checkpoint the authors' key mapping reads: {err}") from err
    return StoredModel(path, "authors", None, {}, finite_weights(path, weights))


def _read_folder(path: Path) -> StoredModel:
    if (path / SHARDED_METADATA).is_file():
        raise CheckpointError(
            f"{path} is a sharded checkpoint; write it as one file first: mimkit convert-checkpoint --checkpoint "
            f"{path} --output FILE.safetensors"
        )
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} is a folder without {CONFIG_NAME}, not a saved model (save_pretrained)")
    config, weights = read_hub_folder(path)
    return StoredModel(path, "pretraining", config["model_name"], config["model_config"], weights, config.get("run"))


def read_stored(path: str | Path, name: str | None = None) -> StoredModel:
    """What the file or folder ``path`` holds; ``name``: the mimkit model an authors' release is read as."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata = _safetensors_metadata(path)
    if metadata is not None and metadata.get("format") == FORMAT:
        return _read_mimkit_checkpoint(path)
    if metadata is not None and "mimkit_model" in metadata:
        return _read_export(path, metadata)
    return _read_authors(path, name)


def build_pretraining_model(
    name: str, stored: StoredModel | None = None, strict: bool = True, **overrides: Any
) -> nn.Module:
    """Pretraining model ``name`` with ``overrides``, from ``stored``'s weights and recorded configuration (with
    ``overrides`` on top) or at random when ``None``."""
    args = stored.model_args(name, overrides) if stored is not None else overrides
    model = model_class(name)(model_config(name, **args))
    model.model_name = name
    if stored is not None:
        stored.load_into(model, strict)
    return model
