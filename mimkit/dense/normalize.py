"""Input normalization of the dense tasks, and the padding value that normalizes to zero."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel of ``(B, C, H, W)`` (or ``(C, H, W)``) images in [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def padding_fill(mean: Sequence[float]) -> list[float]:
    """The pixel value padding takes: the normalization mean (zero after normalization, as the recipes pad after
    normalizing), limited to [0, 1]."""
    return [min(max(float(value), 0.0), 1.0) for value in mean]
