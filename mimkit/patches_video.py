"""Cube layout of video tokens: a token is a ``tubelet x p x p`` pixel cube, tokens row-major over ``(T', gh, gw)``
(time slowest), values inside a cube ordered ``(t, y, x, channel)`` with the channel fastest (the image layout of
:mod:`mimkit.patches` with time in front)."""

from __future__ import annotations

import torch

from mimkit.patches import grid_size


def patchify_cubes(videos: torch.Tensor, tubelet: int, patch_size: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` clips to ``(B, T/tubelet * H/p * W/p, tubelet*p*p*C)`` cubes."""
    b, c, t, h, w = videos.shape
    gh, gw = grid_size(h, w, patch_size)
    p = patch_size
    x = videos.reshape(b, c, t // tubelet, tubelet, gh, p, gw, p)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (t // tubelet) * gh * gw, tubelet * p * p * c)


def unpatchify_cubes(
    cubes: torch.Tensor, tubelet: int, patch_size: int, grid: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify_cubes` on token grid ``grid = (T', gh, gw)``."""
    b = cubes.shape[0]
    frames, gh, gw = grid
    p = patch_size
    x = cubes.reshape(b, frames, gh, gw, tubelet, p, p, channels)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, channels, frames * tubelet, gh * p, gw * p)
