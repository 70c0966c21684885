"""Where a run's records go: ``train.trackers`` picks the backends besides ``metrics.jsonl``, which is always
written (see ``docs/trackers.md``). Optional backends are imported only when chosen."""

from __future__ import annotations

import importlib
import importlib.util
import typing
from collections.abc import Iterable
from dataclasses import dataclass

from mimkit.engine.config_parts import TrackerName
from mimkit.engine.trackers.base import Tracker, TrackerContext
from mimkit.errors import MimkitError


@dataclass(frozen=True)
class Backend:
    module: str
    """The module under ``mimkit.engine.trackers`` and its class."""
    cls: str
    needs: str | None = None
    """The package it imports, where that is an optional dependency."""
    install: str | None = None


BACKENDS = {
    "jsonl": Backend("jsonl", "JsonlTracker"),
    "tensorboard": Backend("tensorboard_events", "TensorBoardTracker"),
    "csv": Backend("csv_table", "CsvTracker"),
    "wandb": Backend("wandb_run", "WandbTracker", needs="wandb", install="pip install wandb"),
    "mlflow": Backend("mlflow_run", "MlflowTracker", needs="mlflow", install="pip install mlflow-skinny"),
}
assert set(BACKENDS) == set(typing.get_args(TrackerName)), "every train.trackers name needs a backend"


def check_trackers_installed(names: Iterable[str]) -> None:
    """Refuse, before a run writes anything, a backend whose package is not installed."""
    for name in names:
        backend = BACKENDS[name]
        if backend.needs and importlib.util.find_spec(backend.needs) is None:
            raise MimkitError(
                f"train.trackers: '{name}' needs the {backend.needs} package, which is not installed: "
                f"`{backend.install}` (or `pip install mimkit[ecosystem]`), or drop '{name}' from train.trackers"
            )


def open_tracker(name: str, context: TrackerContext) -> Tracker:
    backend = BACKENDS[name]
    module = importlib.import_module(f"{__name__}.{backend.module}")
    return getattr(module, backend.cls)(context)
