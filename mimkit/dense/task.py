"""What a dense task tells the shared training loop (:class:`~mimkit.dense.trainer.DenseTrainer`): its model on
a backbone, its training data, its loss and its evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimkit.engine.distributed import DistInfo


class DenseTask(ABC):
    tag: str
    """``detect`` or ``segment``: the command, the backbone variant and the run's TensorBoard tag."""

    def __init__(self, config: Any, dist: DistInfo) -> None:
        self.config = config
        self.dist = dist

    @property
    @abstractmethod
    def train_set(self) -> torch.utils.data.Dataset:
        """Training items keyed by ``(epoch, index)``, each a pure function of the seed, epoch and index."""

    @abstractmethod
    def collate_train(self, items: list) -> Any: ...

    @abstractmethod
    def build_model(self, backbone: nn.Module) -> nn.Module:
        """The task's model on ``backbone``, with timm's ``group_matcher`` (the backbone's layer rule, heads last) for
        layer-wise lr decay."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one batch and its named parts (for the log)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, picture: Path | None, picture_images: int) -> dict[str, Any]:
        """Metrics on the validation set, over all processes; draws ``picture_images`` predictions to
        ``picture`` (main process) when it is given."""

    @abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """One line for the progress display."""

    @abstractmethod
    def describe(self) -> list[str]:
        """Start-up lines about the data."""

    def record(self) -> dict[str, Any]:
        """What the checkpoint records besides the config (e.g. class names)."""
        return {}
