"""The dense recipes' learning-rate schedules, per iteration after a linear warm-up from 0: cosine (detection,
MCMAE Sec. 3.2), poly (the UperNet recipes, MMSegmentation's ``PolyLR``) and step (x0.1 at fixed fractions)."""

from __future__ import annotations

from timm.scheduler import MultiStepLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.optim import Optimizer

from mimkit.engine.optim import build_scheduler


def dense_scheduler(
    optimizer: Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    min_lr: float,
    poly_power: float = 1.0,
    step_at: list[float] | tuple[float, ...] = (),
) -> Scheduler:
    """Call ``scheduler.step_update(step)`` before each optimizer step (0-based). The warm-up is cut to leave at
    least one step of decay."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if schedule == "cosine":
        return build_scheduler(optimizer, total_steps, warmup_steps, min_lr)
    if schedule == "poly":
        return PolyLRScheduler(
            optimizer,
            t_initial=max(total_steps - warmup_steps, 1),
            power=poly_power,
            lr_min=min_lr,
            warmup_t=warmup_steps,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if schedule == "step":
        return MultiStepLRScheduler(
            optimizer,
            decay_t=[round(fraction * total_steps) for fraction in step_at],
            decay_rate=0.1,
            warmup_t=warmup_steps,
            warmup_lr_init=0.0,
            warmup_prefix=False,
            t_in_epochs=False,
        )
    raise ValueError(f"unknown schedule '{schedule}'")
