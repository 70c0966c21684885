"""TensorBoard event files under ``tensorboard/``: scalars ``<tag>/<name>``, images, the config as text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from mimkit.engine.trackers.base import Tracker, TrackerContext

UNPLOTTED = ("epoch",)
"""Record fields that are not plotted (the epoch is the x axis's step divided by the steps per epoch)."""


class TensorBoardTracker(Tracker):
    """A resume hides the events after its checkpoint's step (``purge_step``): the run writes them again."""

    def __init__(self, context: TrackerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.notes = []
        # Records are written at the step reached by the update, so the checkpoint's own step stays.
        purge_step = None if context.resume_step is None else context.resume_step + 1
        self.writer = SummaryWriter(str(context.output / "tensorboard"), purge_step=purge_step)

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        for name, value in scalars.items():
            if name not in UNPLOTTED:
                self.writer.add_scalar(f"{tag}/{name}", value, step)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        self.writer.add_image(name, image, step, dataformats="HWC")

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))

    def close(self, failed: bool = False) -> None:
        self.writer.close()
