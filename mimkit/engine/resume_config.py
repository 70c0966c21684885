"""What a resumed run is: the checkpoint's config, with only the changes the user asked for.

The config stored in a checkpoint is the run's config. Resuming applies the command line's config file and
``key=value`` overrides on top of it; a change to what the run *is* (data, sizes, batch, accumulation, schedule,
optimizer, seed, mask ratio, model) is refused with the list of differences unless ``allow_changes`` is given.
The fields of :data:`HARMLESS_FIELDS` only change how the run is executed or logged and may always change.

The position in the run must fit the run being resumed too: a checkpoint written mid-epoch continues only with
the same images per optimizer step and steps per epoch, or the data order would be cut in the wrong place.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mimkit.config_schema import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from mimkit.engine.checkpoint import TrainPosition
from mimkit.engine.checkpoint_checks import check_position_fits
from mimkit.engine.checkpoint_metadata import stored_config
from mimkit.engine.run_folder import RunFolder
from mimkit.errors import CheckpointError, MimkitError

T = TypeVar("T")

HARMLESS_FIELDS = frozenset(
    {
        "output",
        "data.num_workers",
        "train.device",
        "train.compile",
        "train.activation_checkpointing",
        "train.log_every",
        "train.trackers",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.visualize_images",
        "train.max_steps",
        "train.eval_batch_size",
        "train.eval_every",
    }
)
"""Fields (of pretraining and transfer configs) that may change on resume: where and how fast the run executes,
what it logs and keeps, and where this invocation stops. Every other field is the run's meaning."""

PER_INVOCATION_FIELDS = ("train.max_steps",)
"""Not inherited from the checkpoint: a stop point belongs to the invocation that set it, so a bare resume of a
run stopped by ``max_steps`` continues to the end of its schedule."""


@dataclass(frozen=True)
class ConfigChange:
    field: str
    stored: Any
    requested: Any

    @property
    def harmless(self) -> bool:
        return self.field in HARMLESS_FIELDS

    def __str__(self) -> str:
        return f"{self.field} {self.stored!r} -> {self.requested!r}"


@dataclass(frozen=True)
class RunGeometry:
    """How a run cuts its data into optimizer steps; recorded in each checkpoint under ``run``."""

    images_per_step: int
    steps_per_epoch: int


def flat_fields(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted fields: ``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_fields(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _set_field(data: dict, name: str, value: Any) -> None:
    *sections, last = name.split(".")
    for section in sections:
        child = data.get(section)
        data[section] = child = dict(child) if isinstance(child, dict) else {}
        data = child
    data[last] = value


def run_fields(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """The entries of a checkpoint's config record that are fields of ``cls`` (records also hold the resolved
    model, the run geometry and such)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in stored.items() if key in names}


def config_changes(cls: type[T], stored: dict[str, Any], config: T) -> list[ConfigChange]:
    """Every field whose value in ``config`` differs from the checkpoint's config record ``stored`` (both read
    through ``cls``, so fields a record predates count at their defaults)."""
    try:
        before = flat_fields(to_dict(from_dict(cls, run_fields(cls, stored))))
    except ConfigError as err:
        raise ConfigError(f"the checkpoint's stored config is not valid any more: {err}") from err
    after = flat_fields(to_dict(config))
    missing = object()
    return [
        ConfigChange(name, before.get(name), after.get(name))
        for name in sorted(before.keys() | after.keys())
        if before.get(name, missing) != after.get(name, missing)
    ]


def check_resume_changes(
    cls: type[T], stored: dict[str, Any], config: T, allow_changes: bool, source: str | Path
) -> list[ConfigChange]:
    """All changes of ``config`` against the checkpoint's; raises :class:`ConfigError` listing those that change
    the run's meaning unless ``allow_changes``."""
    changes = config_changes(cls, stored, config)
    meaning = [change for change in changes if not change.harmless]
    if meaning and not allow_changes:
        raise ConfigError(
            f"resuming {source} would change the run: {'; '.join(map(str, meaning))}. A resumed run keeps its "
            "checkpoint's config; drop these overrides, or pass --allow-changes to change the run anyway"
        )
    return changes


def resume_config(
    cls: type[T], stored: dict[str, Any], requested: dict[str, Any], allow_changes: bool, source: str | Path = ""
) -> T:
    """The config of a resumed run: ``stored`` (the checkpoint's record) with ``requested`` (the command line's
    config file and overrides, as one mapping) on top; see :func:`check_resume_changes`."""
    merged = json.loads(json.dumps(run_fields(cls, stored)))
    for name in PER_INVOCATION_FIELDS:
        _set_field(merged, name, None)
    for name, value in flat_fields(requested).items():
        _set_field(merged, name, value)
    config = from_dict(cls, merged)
    check_resume_changes(cls, stored, config, allow_changes, source or "the checkpoint")
    return config


def resume_checkpoint(output: str | Path, resume: str | Path) -> Path:
    """The checkpoint to resume: ``'auto'`` is the run's own ``last.safetensors`` or ``last.dcp`` (the later
    written; one must exist), anything else a checkpoint path (a file, or a sharded checkpoint's folder)."""
    if resume == "auto":
        folder = RunFolder(output)
        written = [p for p in (folder.last_checkpoint, folder.last_sharded) if p.exists()]
        if not written:
            raise MimkitError(
                f"--resume: {output} holds no checkpoint to resume ({folder.last_checkpoint} not found); start "
                "without --resume"
            )
        return max(written, key=lambda p: p.stat().st_mtime_ns)
    path = Path(resume)
    if not path.exists():
        raise MimkitError(f"--resume-from: checkpoint not found: {path}")
    return path


def load_resumed_config(
    cls: type[T], config_path: str | None, overrides: list[str], resume: str, allow_changes: bool
) -> tuple[T, Path]:
    """:func:`resumed_config` of the command line's config file and ``key=value`` overrides."""
    requested = apply_overrides(load_yaml(config_path) if config_path else {}, overrides)
    return resumed_config(cls, requested, resume, allow_changes)


def resumed_config(cls: type[T], requested: dict[str, Any], resume: str | Path, allow_changes: bool) -> tuple[T, Path]:
    """The resumed config and the checkpoint it resumes (``resume``: ``'auto'`` or a path); ``requested`` is the
    config mapping asked for (a file's sections with overrides applied). The output folder is the requested one (or,
    for a checkpoint path without one, the stored run's)."""
    requested = dict(requested)
    if resume == "auto":
        default_output = next(f.default for f in dataclasses.fields(cls) if f.name == "output")
        requested.setdefault("output", default_output)
    checkpoint = resume_checkpoint(requested.get("output", ""), resume)
    stored = stored_config(checkpoint)
    if stored is None:
        raise CheckpointError(f"{checkpoint} is not a readable mimkit checkpoint")
    return resume_config(cls, stored, requested, allow_changes, checkpoint), checkpoint


def _recorded_geometry(stored: Any, source: Path) -> RunGeometry:
    """The ``run`` record of a checkpoint, checked: two positive whole numbers."""
    names = [f.name for f in dataclasses.fields(RunGeometry)]
    if not isinstance(stored, dict) or sorted(stored) != sorted(names):
        raise CheckpointError(f"{source}: its 'run' record is malformed (expected {', '.join(names)})")
    if not all(type(stored[name]) is int and stored[name] > 0 for name in names):
        raise CheckpointError(f"{source}: its 'run' record holds {stored}, not positive whole numbers")
    return RunGeometry(**stored)


def fit_position(
    position: TrainPosition, stored: dict[str, Any] | None, geometry: RunGeometry, allow_changes: bool, source: Path
) -> TrainPosition:
    """The checkpoint's position in a run cut as ``geometry`` (``stored``: the geometry the checkpoint recorded,
    ``None`` for checkpoints that predate the record). Refuses what cannot continue: a mid-epoch position in a
    run cut differently, or any change of the cut without ``allow_changes``; at an epoch boundary an allowed
    change continues at the same epoch, its step counted in the new steps per epoch. A position one past its
    epoch's last step (older versions wrote one when a periodic checkpoint fell on the epoch's last step) is read
    as the start of the next epoch."""
    where = f"{source} (step {position.step}, epoch {position.epoch}, step {position.step_in_epoch} of the epoch)"
    before = _recorded_geometry(stored, source) if stored is not None else geometry
    if position.step_in_epoch == before.steps_per_epoch:
        position = TrainPosition(step=position.step, epoch=position.epoch + 1)
    check_position_fits(position, before.steps_per_epoch, source)
    if before == geometry:
        return position
    cut = (
        f"it was written by a run of {before.images_per_step} images per step and {before.steps_per_epoch} steps "
        f"per epoch, this run has {geometry.images_per_step} and {geometry.steps_per_epoch} (batch size, "
        "accumulation, process count or samples_per_epoch differ)"
    )
    if position.step_in_epoch:
        raise MimkitError(
            f"cannot resume {where} mid-epoch: {cut}; resume with the same ones, or from a checkpoint written at "
            "the end of an epoch"
        )
    if not allow_changes:
        raise MimkitError(f"resuming {where} would change the run: {cut}; pass --allow-changes to continue anyway")
    return TrainPosition(step=position.epoch * geometry.steps_per_epoch, epoch=position.epoch)
