"""``mimkit.load_checkpoint``: the model any checkpoint holds, rebuilt from what it records, without executing code.

A pretraining checkpoint or a ``save_pretrained`` folder gives the pretraining model, a fine-tuning or probe
checkpoint its classifier (encoder + pooling norm + head), an encoder written by ``mimkit export`` the encoder, and
an authors' released checkpoint (which records no model: name it) the pretraining model through the key mapping of
its family. Loading is strict by default; ``strict=False`` loads what fits and reports the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint_checks import LoadReport
from mimkit.errors import CheckpointError, MimkitError
from mimkit.eval.classifier import Classifier
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.registry import model_config
from mimkit.models import create_encoder
from mimkit.output_guard import check_new_folder
from mimkit.pretrained import build_pretraining_model, read_stored

CLASSIFIER_KINDS = ("finetune", "linprobe")
"""The checkpoints of a transfer run, which hold a classifier."""


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode."""

    model: nn.Module
    """A :class:`~mimkit.methods.base.PretrainingModel`, a :class:`~mimkit.eval.classifier.Classifier` or an
    encoder."""
    kind: str
    """What the file was: ``pretraining``, ``finetune``, ``linprobe``, ``encoder`` or ``authors``."""
    name: str
    """The mimkit model name."""
    model_config: dict[str, Any]
    """The resolved model configuration the model was built from."""
    run: dict[str, Any] | None
    """For weights of a mimkit run: its recorded ``config``, and the ``step`` and ``epoch`` reached."""
    report: LoadReport
    """What was left out (``strict=False``); complete otherwise."""


def load_checkpoint(
    path: str | Path, model: str | None = None, *, strict: bool = True, **overrides: Any
) -> LoadedCheckpoint:
    """The model held by ``path``: a mimkit checkpoint (pretraining, fine-tuning or probe), a ``save_pretrained``
    folder, an encoder written by ``mimkit export``, or an authors' release (``model`` names it; for the other files
    it must be the recorded model if given). ``overrides`` change configuration fields that do not shape the
    weights (e.g. ``mask_ratio``, ``drop_path_rate``)."""
    stored = read_stored(path, model)
    name = model or stored.name
    resolved = to_dict(model_config(name, **stored.model_args(name, overrides)))
    if stored.kind in CLASSIFIER_KINDS:
        num_classes = stored.run["config"].get("num_classes")
        if type(num_classes) is not int or num_classes < 2:
            raise CheckpointError(f"{path} records no number of classes (num_classes {num_classes!r:.40})")
        built = Classifier(create_encoder(name, **resolved), num_classes, linear_probe=stored.kind == "linprobe")
        stored.load_into(built, strict)
    elif stored.kind == "encoder":
        built = create_encoder(name, **resolved)
        stored.load_into(built, strict, encoder=True)
    else:
        built = build_pretraining_model(name, stored, strict, **overrides)
    return LoadedCheckpoint(built.eval(), stored.kind, name, resolved, stored.run, built.load_report)


def load_pretraining_model(path: str | Path) -> LoadedCheckpoint:
    """:func:`load_checkpoint` for a pretraining model (a classifier or encoder alone has no decoder)."""
    loaded = load_checkpoint(path)
    if not isinstance(loaded.model, PretrainingModel):
        what = "an encoder exported by `mimkit export`" if loaded.kind == "encoder" else f"a {loaded.kind} checkpoint"
        raise MimkitError(
            f"{path} is {what} (a {type(loaded.model).__name__}, no decoder to reconstruct with); use a pretraining "
            "checkpoint (`mimkit pretrain`'s OUTPUT/checkpoints/last.safetensors)"
        )
    return loaded


def save_hub_folder(checkpoint: str | Path, output: str | Path) -> Path:
    """Write the pretraining model of ``checkpoint`` (a mimkit pretraining checkpoint) as a Hugging Face Hub folder
    (``save_pretrained``), with the model card of its run; ``output`` must be a new or empty folder."""
    check_new_folder(output)
    loaded = load_pretraining_model(checkpoint)
    loaded.model.save_pretrained(output)
    return Path(output)


from_pretrained = PretrainingModel.from_pretrained
"""``mimkit.from_pretrained(folder or repo id)``: whichever pretraining model a ``save_pretrained`` folder holds."""
