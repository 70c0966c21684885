"""A fine-tuned or probed classifier back from its mimkit checkpoint: the model as it was trained (encoder, pooling
norm, head), the run's config (its data section says how images are prepared) and the names of its classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mimkit.config_schema import ConfigError, from_dict
from mimkit.engine.checkpoint import Checkpoint, load_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state
from mimkit.engine.resume_config import run_fields
from mimkit.errors import CheckpointError
from mimkit.eval.checkpoint_record import recorded_model
from mimkit.eval.classifier import Classifier
from mimkit.eval.config import TransferConfig
from mimkit.models import create_encoder

CLASSIFIER_PROTOCOLS = ("finetune", "linprobe")
"""The transfer protocols whose checkpoints hold a classifier."""


@dataclass
class StoredClassifier:
    model: Classifier
    """In eval mode, on the CPU."""
    config: TransferConfig
    num_classes: int
    class_names: list[str] | None
    """The class of each output, as the training data named them (``None`` in checkpoints that predate the record)."""

    def label(self, index: int) -> str:
        """Class ``index`` by name where the checkpoint records names, else by number."""
        return self.class_names[index] if self.class_names else str(index)


def load_classifier(path: str | Path) -> StoredClassifier:
    """The classifier in a ``mimkit finetune`` or ``mimkit linprobe`` checkpoint file; a :class:`CheckpointError` for
    any other checkpoint (a pretraining one has no head)."""
    return classifier_from_checkpoint(load_checkpoint(path), path)


def classifier_from_checkpoint(stored: Checkpoint, path: str | Path) -> StoredClassifier:
    """The classifier in ``stored``, a checkpoint read from ``path`` (see :func:`load_classifier`)."""
    record = stored.config
    protocol = record.get("protocol")
    if protocol not in CLASSIFIER_PROTOCOLS:
        raise CheckpointError(
            f"{path} is not a fine-tuning or linear-probe checkpoint (it holds no classifier); use the "
            "checkpoint of a `mimkit finetune` run (OUTPUT/checkpoints/best.safetensors)"
        )
    try:
        config = from_dict(TransferConfig, run_fields(TransferConfig, record))
    except ConfigError as err:
        raise CheckpointError(f"{path}: the stored config is not valid any more: {err}") from err
    num_classes = record.get("num_classes")
    if type(num_classes) is not int or num_classes < 2:
        raise CheckpointError(f"{path} records no valid number of classes (num_classes: {num_classes!r:.40})")
    class_names = record.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list)
        or len(class_names) != num_classes
        or not all(isinstance(name, str) for name in class_names)
    ):
        raise CheckpointError(f"{path} records malformed class names: expected {num_classes} strings")
    name, resolved = recorded_model(record, path)
    model = Classifier(create_encoder(name, **resolved), num_classes, linear_probe=protocol == "linprobe")
    load_model_state(model, stored.model, path)
    return StoredClassifier(model.eval(), config, num_classes, class_names)
