"""Losses shared by the methods."""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's loss: per-token mean squared error, averaged over the masked tokens of the whole batch.

    Returns ``(loss, per_token)``; one average over every masked token of the batch, not a mean of
    per-image means (parity README 3, step 6).
    """
    per_token = (pred - target).pow(2).mean(dim=-1)
    return (per_token * mask).sum() / mask.sum(), per_token
