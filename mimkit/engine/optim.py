"""Optimizer and learning-rate schedule of the MAE-family recipes (MAE appendix A.1, Table 8)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose AdamW has a fused kernel in the supported torch versions."""


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters exempt from weight decay besides norms and biases: position embeddings."""
    return {name for name, _ in model.named_parameters() if "pos_embed" in name}


def adamw(params: Iterable, **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused into one kernel per parameter where every parameter allows it.

    The default multi-tensor update allocates full-size temporaries for each of its ~10 element-wise passes; the
    fused kernel makes one pass. At ViT-B/Swin-B size on a 2-core CPU that is 0.08 s instead of 0.35 s a step,
    and several seconds more where the temporaries page-fault in fresh memory (``benchmarks/optimizer_step.py``).
    """
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **options)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW; weight decay skips 1-D parameters (norms, biases) and position embeddings."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))
    return adamw(groups, lr=lr, betas=betas)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float
) -> CosineLRScheduler:
    """Per-iteration schedule: linear warm-up from 0 over ``warmup_steps``, then half-cosine to ``min_lr``.

    Call ``scheduler.step_update(step)`` before each optimizer step (0-based step index).
    """
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup_steps, 1),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def effective_lr(base_lr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: lr = base_lr x effective batch / 256."""
    return base_lr * effective_batch / 256
