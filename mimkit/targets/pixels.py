"""Pixel targets (MAE Sec. 3 "Reconstruction target"; parity README 2.2)."""

from __future__ import annotations

import torch

from mimkit.patches import patchify


def normalized_pixels(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalize each patch by its own mean and *unbiased* variance, eps added to the variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


@torch.no_grad()
def pixel_target(images: torch.Tensor, patch_size: int, normalize: bool) -> torch.Tensor:
    """Per-patch target ``(B, L, p*p*C)``: raw pixels, or per-patch normalized when ``normalize``."""
    patches = patchify(images, patch_size)
    return normalized_pixels(patches) if normalize else patches
