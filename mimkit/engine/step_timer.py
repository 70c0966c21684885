"""Data time against step time, per optimizer step, for every training loop.

``data_s`` is the wall time the loop spent waiting for the loader's batches of one optimizer step (all its
micro-batches); ``step_s`` the wall time from asking for the step's first batch to the end of its update. So
``0 <= data_s <= step_s``, and what happens between steps (checkpoints, evaluation, pictures) counts in neither.
A ``data_s`` close to ``step_s`` says the loader starves the model: raise ``data.num_workers``.

On CUDA, kernels run after the Python code that queued them returns. The GPU is synchronized only at log points
(``step_done(log_point=True)``), not every step: a step's ``step_s`` between log points is the time until its work
was queued (the loops read the loss with ``.item()``, which already waits for the GPU, so in practice it is the
GPU time too), and at each log point all queued work is counted, so the times of a log window add up exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

Batch = TypeVar("Batch")


class StepTimer:
    """Times the loader waits and the steps of one training loop on ``device`` (see the module's docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.data_s = 0.0
        self.step_started: float | None = None

    def batches(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        """``loader``'s batches, each wait for one counted in the current step's ``data_s``."""
        iterator = iter(loader)
        while True:
            asked = time.perf_counter()
            if self.step_started is None:
                self.step_started = asked
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.data_s += time.perf_counter() - asked
            yield batch

    def step_done(self, log_point: bool) -> dict[str, float]:
        """``{"data_s": ..., "step_s": ...}`` of the step just finished; the next batch starts the next step."""
        if log_point and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        started = now if self.step_started is None else self.step_started
        times = {"data_s": self.data_s, "step_s": now - started}
        self.data_s, self.step_started = 0.0, None
        return times
