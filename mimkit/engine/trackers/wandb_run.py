"""Weights & Biases: scalars ``<tag>/<name>``, images and the config, in a W&B run under the run folder (``wandb/``).

It runs offline unless ``WANDB_MODE`` says otherwise (``WANDB_MODE=online`` streams to the server; an offline run
uploads later with ``wandb sync OUTPUT/wandb/offline-run-*``). ``WANDB_PROJECT`` names the project (default
``mimkit``); the W&B run is named after the run folder, and a resumed run continues the same W&B run (its id is
kept in ``trackers.json``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mimkit.engine.trackers.base import Tracker, TrackerContext

DEFAULT_PROJECT = "mimkit"
DEFAULT_MODE = "offline"


class WandbTracker(Tracker):
    def __init__(self, context: TrackerContext) -> None:
        import wandb

        self.wandb = wandb
        self.notes = []
        remembered = context.remembered_run("wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            name=context.name,
            dir=str(context.output),
            id=remembered,
            resume="allow" if remembered else None,
            mode=None if "WANDB_MODE" in os.environ else DEFAULT_MODE,
            settings=wandb.Settings(silent=True, console="off", disable_git=True, save_code=False),
        )
        if self.run.id != remembered:
            context.remember_run("wandb", self.run.id)

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        self.run.log({f"{tag}/{name}": value for name, value in scalars.items()}, step=step)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        self.run.log({name: self.wandb.Image(image)}, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
