"""Callbacks: user code the training loops call at their events, on the main process.

Subclass :class:`Callback` and override the events you need; pass instances to a trainer
(``Pretrainer(config, callbacks=[...])``, ``TransferTrainer``, ``DenseTrainer``). ``trainer`` is the running
trainer (its ``config``, ``model``, ``position``, ``output``, ...). A callback stops the run early by setting
``trainer.should_stop = True``: the run ends after the current step as if ``train.max_steps`` had stopped it there
(a transfer or dense run validates first), writing its checkpoint, so ``--resume`` continues it.

Only the main process runs callbacks; under torchrun the stop request reaches every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mimkit.engine.distributed import sum_across_processes
from mimkit.errors import MimkitError


class Callback:
    """The events of a training run; each does nothing unless overridden."""

    def on_step(self, trainer: Any, record: dict[str, Any]) -> None:
        """After each optimizer step: ``record`` is what the metrics log received (step, epoch, loss and its parts,
        lr, images_per_s, data_s, step_s, ...)."""

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """After epoch ``epoch`` (0-based) ended and its checkpoint was written: ``record`` is its last step's, with
        the epoch's validation scores where there were some."""

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_eval(self, trainer: Any, record: dict[str, Any]) -> None:
        """After a validation (fine-tuning, probing, detection, segmentation): ``record`` holds its scores."""

    def on_run_end(self, trainer: Any, summary: Any) -> None:
        """When the run returns its summary (also when a resumed run had nothing left to do)."""


class CallbackList:
    """Calls a trainer's callbacks in order at each event (main process only) and, after the events a loop can
    stop at, agrees on ``trainer.should_stop`` across the processes."""

    def __init__(self, callbacks: Sequence[Callback], main: bool, device: torch.device) -> None:
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise MimkitError(f"callbacks must be mimkit.Callback instances, got {type(callback).__name__}")
        self.callbacks = tuple(callbacks)
        self.main = main
        self.device = device

    def _call(self, event: str, trainer: Any, *args: Any) -> None:
        if self.main:
            for callback in self.callbacks:
                getattr(callback, event)(trainer, *args)
        self._agree_on_stop(trainer)

    def _agree_on_stop(self, trainer: Any) -> None:
        """Every process takes the main process's ``should_stop`` (one tiny all-reduce, only where callbacks run)."""
        if not self.callbacks:
            return
        flag = torch.tensor(float(trainer.should_stop), device=self.device)
        trainer.should_stop = bool(sum_across_processes(flag).item())

    def step(self, trainer: Any, record: dict[str, Any]) -> None:
        self._call("on_step", trainer, record)

    def epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        self._call("on_epoch_end", trainer, epoch, record)

    def checkpoint(self, trainer: Any, path: Path) -> None:
        self._call("on_checkpoint", trainer, path)

    def eval(self, trainer: Any, record: dict[str, Any]) -> None:
        self._call("on_eval", trainer, record)

    def run_end(self, trainer: Any, summary: Any) -> None:
        if self.main:
            for callback in self.callbacks:
                callback.on_run_end(trainer, summary)
