"""Training from Python: :func:`pretrain`, :func:`finetune`, :func:`linprobe` and :func:`knn` run the commands of the
same names over the same engine (the command line is a thin shell over this module; ``docs/python_api.md``).

``config`` is any of: ``None`` (the command's defaults), a config object
(:class:`~mimkit.engine.config.PretrainConfig`, :class:`~mimkit.eval.config.TransferConfig`,
:class:`~mimkit.eval.config.KnnConfig`), a YAML path, a packaged recipe name as ``--config`` takes
(``mae/vit_base_800ep``), or a dict of config sections. ``overrides`` are ``key=value`` strings as on the command
line, applied on top; the result is validated as the command line's is.

``dataset`` is any map-style dataset (``len()`` and ``[index]``, such as a ``torch.utils.data.Dataset``) of images
for pretraining, or of ``(image, label)`` pairs for the transfer protocols, with ``val_dataset`` the pairs they score
on. Images are PIL images, uint8 arrays (H, W[, C]) or tensors (C, H, W) (uint8, or float in [0, 1]); they go
through the config's transforms (``data.img_size``, ``in_chans``, ``mean``/``std``, crops) like a folder's files. A
dataset sets ``data.source: python`` and records its length (``data.python_length``), so a resume with a dataset of
another length is refused like any other change to the run. ``callbacks`` are :class:`mimkit.Callback` instances
the trainer calls at the run's events (:mod:`mimkit.engine.callbacks`).

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimkit.config_paths import resolve_config_path
from mimkit.config_schema import Settings, apply_overrides, from_dict, load_yaml, merged_sections, to_dict
from mimkit.engine.config import PretrainConfig
from mimkit.engine.config_parts import PYTHON_SOURCE
from mimkit.errors import MimkitError
from mimkit.eval.config import KnnConfig, TransferConfig, knn_config, transfer_config

if TYPE_CHECKING:
    from mimkit.engine.callbacks import Callback
    from mimkit.engine.pretrain import Pretrainer, RunSummary
    from mimkit.eval.knn import KnnResult
    from mimkit.eval.transfer import TransferSummary, TransferTrainer

ConfigInput = Settings | str | os.PathLike | Mapping[str, Any] | None
"""What ``config`` may be (see the module docstring)."""


def config_mapping(config: ConfigInput, config_type: type, command: str) -> tuple[dict[str, Any], str]:
    """``config`` as a mapping of sections, and a name for it in errors; ``command`` decides which packaged recipes
    fit (as ``mimkit COMMAND --config``)."""
    if config is None:
        return {}, "the default config"
    if isinstance(config, (str, os.PathLike)):
        path = resolve_config_path(os.fspath(config), command)
        return load_yaml(path), path
    if isinstance(config, config_type):
        return to_dict(config), f"the {config_type.__name__}"
    if isinstance(config, Mapping):
        return to_dict(dict(config)), "the config mapping"
    raise MimkitError(
        f"config is a {type(config).__name__}; give a {config_type.__name__}, a YAML path, a packaged recipe name "
        "or a dict of config sections"
    )


def _python_data(dataset: Any, val_dataset: Any, labelled: bool) -> dict[str, Any]:
    """The data fields that make a run read the datasets passed in Python (paths cleared: nothing else is read)."""
    from mimkit.data.dataset_source import dataset_length

    if not labelled:
        return {"source": PYTHON_SOURCE, "path": None, "python_length": dataset_length(dataset, "dataset")}
    if dataset is None or val_dataset is None:
        given, missing = ("dataset", "val_dataset") if val_dataset is None else ("val_dataset", "dataset")
        raise MimkitError(
            f"{given}= needs {missing}= too: the (image, label) pairs to train on and the held-out pairs to score on"
        )
    return {
        "source": PYTHON_SOURCE,
        "train_path": None,
        "val_path": None,
        "python_length": dataset_length(dataset, "dataset"),
        "python_val_length": dataset_length(val_dataset, "val_dataset"),
    }


def _requested(
    config: ConfigInput, config_type: type, command: str, overrides: Sequence[str], datasets: tuple[Any, Any] | None
) -> tuple[dict[str, Any], str]:
    """The config mapping asked for: ``config``, then ``overrides``, then the fields of the datasets passed (None:
    none passed)."""
    mapping, source = config_mapping(config, config_type, command)
    requested = apply_overrides(mapping, list(overrides))
    if datasets is not None:
        labelled = config_type is not PretrainConfig
        requested = merged_sections(requested, {"data": _python_data(*datasets, labelled=labelled)})
    return requested, source


def _datasets(dataset: Any, val_dataset: Any = None) -> tuple[Any, Any] | None:
    return None if dataset is None and val_dataset is None else (dataset, val_dataset)


def pretrainer(
    config: ConfigInput = None,
    dataset: Any = None,
    *,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> Pretrainer:
    """The :class:`~mimkit.engine.pretrain.Pretrainer` :func:`pretrain` runs, built (data read and checked, model
    made, a resumed checkpoint loaded) but not started: its ``describe()`` is ``mimkit pretrain --dry-run``."""
    requested, _ = _requested(config, PretrainConfig, "pretrain", overrides, _datasets(dataset))
    if resume is not None:
        from mimkit.engine.resume_config import resumed_config

        resolved, checkpoint = resumed_config(PretrainConfig, requested, resume, allow_changes)
    else:
        resolved, checkpoint = from_dict(PretrainConfig, requested), None

    from mimkit.engine.pretrain import Pretrainer

    return Pretrainer(resolved, checkpoint, overwrite, allow_changes, dataset=dataset, callbacks=callbacks)


def pretrain(
    config: ConfigInput = None,
    dataset: Any = None,
    *,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> RunSummary:
    """Pretrain as ``mimkit pretrain`` does and return the run's summary (checkpoint, metrics log, reconstruction
    pictures, steps, last loss). ``dataset``: images to pretrain on instead of the config's data source.
    ``resume``: ``'auto'`` (the output folder's last checkpoint) or a checkpoint path; ``overwrite`` starts over in
    an output folder that holds a run; ``allow_changes`` lets a resume change what the run is."""
    return pretrainer(
        config,
        dataset,
        overrides=overrides,
        callbacks=callbacks,
        resume=resume,
        overwrite=overwrite,
        allow_changes=allow_changes,
    ).run()


def transfer_trainer(
    protocol: str,
    config: ConfigInput = None,
    dataset: Any = None,
    *,
    val_dataset: Any = None,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> TransferTrainer:
    """The :class:`~mimkit.eval.transfer.TransferTrainer` of ``protocol`` (``finetune`` or ``linprobe``), built but
    not started."""
    requested, source = _requested(config, TransferConfig, protocol, overrides, _datasets(dataset, val_dataset))
    resolved, checkpoint = transfer_config(protocol, requested, source=source), None
    if resume is not None:
        from mimkit.engine.resume_config import resumed_config

        requested = {**requested, "output": resolved.output, "protocol": protocol}  # linprobe's default output differs
        resolved, checkpoint = resumed_config(TransferConfig, requested, resume, allow_changes)

    from mimkit.eval.transfer import TransferTrainer

    return TransferTrainer(
        resolved,
        checkpoint,
        overwrite,
        allow_changes,
        dataset=dataset,
        val_dataset=val_dataset,
        callbacks=callbacks,
    )


def _transfer_protocol(protocol: str, doc: str) -> Callable[..., TransferSummary]:
    """The public function of a transfer protocol: :func:`transfer_trainer` of ``protocol``, run."""

    def run(
        config: ConfigInput = None,
        dataset: Any = None,
        *,
        val_dataset: Any = None,
        overrides: Sequence[str] = (),
        callbacks: Sequence[Callback] = (),
        resume: str | Path | None = None,
        overwrite: bool = False,
        allow_changes: bool = False,
    ) -> TransferSummary:
        return transfer_trainer(
            protocol,
            config,
            dataset,
            val_dataset=val_dataset,
            overrides=overrides,
            callbacks=callbacks,
            resume=resume,
            overwrite=overwrite,
            allow_changes=allow_changes,
        ).run()

    run.__name__ = run.__qualname__ = protocol
    run.__doc__ = doc
    return run


finetune = _transfer_protocol(
    "finetune",
    """Fine-tune a pretrained encoder (``model.checkpoint``) as ``mimkit finetune`` does and return the run's
    summary (top-1/top-5, best and last checkpoints, history). ``dataset``/``val_dataset``: ``(image, label)``
    pairs to train and score on instead of the config's data; the other arguments as for :func:`pretrain`.""",
)
linprobe = _transfer_protocol(
    "linprobe",
    """Train a linear probe on a frozen encoder as ``mimkit linprobe`` does (MAE's probe settings by default); the
    arguments and the summary as for ``finetune``.""",
)


def knn(
    config: ConfigInput = None, dataset: Any = None, *, val_dataset: Any = None, overrides: Sequence[str] = ()
) -> KnnResult:
    """Weighted kNN classification on frozen features as ``mimkit knn`` does; returns top-1/top-5 (in %) and the
    image counts. ``dataset``/``val_dataset``: ``(image, label)`` pairs for the feature bank and the queries."""
    requested, _ = _requested(config, KnnConfig, "knn", overrides, _datasets(dataset, val_dataset))
    resolved = knn_config(requested)

    from mimkit.eval.knn import knn_evaluate

    return knn_evaluate(resolved, dataset, val_dataset)
