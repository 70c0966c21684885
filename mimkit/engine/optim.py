"""Optimizer and learning-rate schedule of the MAE-family recipes (MAE appendix A.1, Table 8)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose AdamW has a fused kernel in the supported torch versions."""


TRANSFER_NO_WEIGHT_DECAY = ("cls_token", "pos_embed", "relative_position_bias_table")
"""Parameters the fine-tuning recipes exempt from weight decay by name, besides norms and biases (1-D): MAE's
fine-tuning takes the ViT's ``no_weight_decay()`` (class token, position embedding), MixMIM's the Swin's relative
position bias tables, and the detection/segmentation recipes the same names. Pretraining exempts only position
embeddings (MAE's ``main_pretrain`` decays the class and mask tokens)."""


def no_weight_decay_names(model: nn.Module, parts: tuple[str, ...] = ("pos_embed",)) -> set[str]:
    """Parameters of ``model`` exempt from weight decay besides norms and biases: those whose name holds one of
    ``parts`` (pretraining's default: position embeddings; transfer: :data:`TRANSFER_NO_WEIGHT_DECAY`)."""
    return {name for name, _ in model.named_parameters() if any(part in name for part in parts)}


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


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (BEiT/MAE) for a model with timm's ``group_matcher`` (the
    encoder's layer rule, heads last): a parameter ``n`` layers below the head learns at ``layer_decay ** n`` times
    the rate; norms, biases and the parameters :data:`TRANSFER_NO_WEIGHT_DECAY` names get no weight decay. Each
    group carries ``lr_scale``, which timm's schedulers apply."""
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=no_weight_decay_names(model, TRANSFER_NO_WEIGHT_DECAY),
        layer_decay=layer_decay,
    )


def step_optimizer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    clip_grad: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> bool:
    """Apply the accumulated gradients as optimizer step ``step`` (0-based): set its learning rate, clip the global
    gradient norm to ``clip_grad`` (None: no clipping), step, and clear the gradients; returns whether the update
    was applied.

    With an fp16 ``scaler`` the gradients are unscaled before clipping, and the scaler steps: where they overflowed
    (inf/NaN) it skips the update, leaving weights and optimizer state as they were, and lowers its scale (returns
    False). The schedule advances either way (see :mod:`mimkit.engine.precision`)."""
    scheduler.step_update(step)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    applied = True
    if scaler is None:
        optimizer.step()
    else:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        applied = scaler.get_scale() >= scale  # update() lowers the scale exactly when the step was skipped
    optimizer.zero_grad(set_to_none=True)
    return applied


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
