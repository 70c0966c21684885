"""Patch layout shared by every method (parity README 2.1).

Tokens are row-major over the patch grid; inside a token the values are ordered ``(y, x, channel)``
with the channel fastest, so a token is ``p*p*C`` values.
"""

from __future__ import annotations

import torch


def grid_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid of an input, with a clear error when the size is not a multiple of the patch."""
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"choose an image size that is a multiple of {patch_size}"
        )
    return height // patch_size, width // patch_size


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
