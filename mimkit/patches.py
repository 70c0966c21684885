"""Patch layout shared by every method (parity README 2.1).

Tokens are row-major over the patch grid; inside a token the values are ordered ``(y, x, channel)``
with the channel fastest, so a token is ``p*p*C`` values.
"""

from __future__ import annotations

import torch

from mimkit.grids import grid_size


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images to ``(B, L, p*p*C)`` tokens."""
    b, c, h, w = images.shape
    gh, gw = grid_size(h, w, patch_size)
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(tokens: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, L, p*p*C)`` tokens to ``(B, C, H, W)`` images."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch_size, gw * patch_size)
