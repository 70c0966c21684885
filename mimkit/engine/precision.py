"""How the training loops compute: ``train.precision`` decides the autocast of the forward passes and, for ``fp16``,
adds a gradient scaler.

- ``fp32``: no autocast.
- ``bf16``: bfloat16 autocast; bf16 has fp32's exponent range, so gradients need no scaling.
- ``fp16``: float16 autocast (V100-class GPUs, LocalMIM's recipe) with :class:`torch.amp.GradScaler`: the loss is
  multiplied by the scale before backward so small gradients do not flush to zero, the gradients are unscaled
  before clipping, and a step whose gradients overflowed (inf/NaN) is skipped while the scale is halved. Such a
  skipped step is normal, counted (``skipped_steps``, with the current ``loss_scale``, in ``metrics.jsonl``) and
  not fatal. A non-finite *loss* still stops the run in every precision: the scaler only rescales gradients and
  cannot repair a forward pass that overflowed or diverged, and skipping such steps could go on forever.
- The learning-rate schedule advances on a skipped step, as with timm's ``NativeScaler`` that MAE and LocalMIM
  trained with: a step's position in the schedule is its index, whether or not its update was applied.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from mimkit.engine.optim import step_optimizer

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each reduced precision; ``fp32`` has none."""


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of the forward passes of a run on ``device`` in ``precision``; none for ``fp32`` (so
    it also serves devices autocast does not know, such as ``meta``)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class ProcessGroupGradScaler(torch.amp.GradScaler):
    """A GradScaler for runs of several processes: after unscaling, the overflow flag is all-reduced (max), so every
    rank skips the same steps and keeps the same scale. Needed where each rank holds a shard of the gradients
    (FSDP), harmless with DDP, whose gradients are already averaged. torch's ``ShardedGradScaler`` does the same,
    but its flag's shape breaks fused AdamW's skip (torch 2.14: "output with shape [] doesn't match the broadcast
    shape [1]")."""

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        super().unscale_(optimizer)
        for found_inf in self._found_inf_per_device(optimizer).values():
            torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler, one overflow decision for all processes where there are several."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (ProcessGroupGradScaler if distributed else torch.amp.GradScaler)(device.type)


class Precision:
    """A run's precision: its autocast, its backward and optimizer step (through the fp16 scaler where there is one)
    and the scaler's state for the checkpoint."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.scaler = grad_scaler(device) if name == "fp16" else None
        self.skipped_steps = 0
        """Optimizer steps the scaler skipped for overflowing gradients, over the whole run (resumes included)."""
        self.last_skipped = False

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.name)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss``, multiplied by the loss scale under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, clip_grad: float | None
    ) -> bool:
        """Optimizer step ``step`` (:func:`~mimkit.engine.optim.step_optimizer`); returns whether the update was
        applied (False: the scaler skipped it for overflowing gradients, and counted it)."""
        applied = step_optimizer(model, optimizer, scheduler, step, clip_grad, self.scaler)
        self.last_skipped = not applied
        self.skipped_steps += not applied
        return applied

    def record(self) -> dict[str, float]:
        """The fields a metrics record gains: under fp16 the current loss scale and the steps skipped so far."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.skipped_steps}

    def overflow_note(self, step: int) -> str | None:
        """The progress line of a step the scaler just skipped, else None."""
        if not self.last_skipped:
            return None
        return (
            f"step {step}: fp16 gradients overflowed, update skipped (not fatal); loss scale lowered to "
            f"{self.scaler.get_scale():g}, {self.skipped_steps} step(s) skipped so far"
        )

    def state(self) -> dict[str, Any] | None:
        """The scaler's state for a checkpoint (JSON), None without a scaler."""
        if self.scaler is None:
            return None
        tracker = self.scaler.state_dict()["_growth_tracker"]
        return {"scale": self.scaler.get_scale(), "growth_tracker": tracker, "skipped_steps": self.skipped_steps}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's scaler state (as :func:`~mimkit.engine.checkpoint.load_checkpoint` checked
        it). A run without a scaler ignores one; an fp16 run resumed from a checkpoint without one (its precision
        changed on resume) starts the scaler afresh."""
        if self.scaler is None or state is None:
            return
        self.scaler.load_state_dict(
            {**self.scaler.state_dict(), "scale": state["scale"], "_growth_tracker": state["growth_tracker"]}
        )
        self.skipped_steps = state["skipped_steps"]
