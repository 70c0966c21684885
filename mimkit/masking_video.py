"""Masks over spatio-temporal tokens (VideoConvMAE Sec. 3.4; VideoMAE's tube masking).

Tokens are the cubes of the video grid ``(T', gh, gw)`` in row-major order (time slowest). As for images the
mask comes from an explicit noise tensor, so a run replays exactly:

* **tube** masking draws one spatial mask from ``(B, gh*gw)`` noise and repeats it over every time step, so a
  hidden region stays hidden in all frames and cannot be copied from a neighbouring frame;
* **random** masking hides cubes independently from ``(B, T'*gh*gw)`` noise.

The paper only names "tube masking with 90% mask ratio"; the count of hidden tokens follows VideoMAE's mask
generators: ``int(ratio * n)`` hidden out of ``n`` (per frame for tubes), so 0.9 at 224 px hides 176 of each
frame's 196 tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from mimkit.masking import RandomMask, keep_smallest

VideoMasking = Literal["tube", "random"]


def num_hidden_tokens(num_tokens: int, mask_ratio: float) -> int:
    """VideoMAE's count: ``int(ratio * n)``, leaving at least one token visible."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return min(int(mask_ratio * num_tokens), num_tokens - 1)


def video_noise_shape(masking: VideoMasking, batch: int, grid: tuple[int, int, int]) -> tuple[int, int]:
    """Noise for ``batch`` clips on token grid ``(T', gh, gw)``: one value per spatial position for tubes, per
    cube for random masking."""
    frames, gh, gw = grid
    return (batch, gh * gw) if masking == "tube" else (batch, frames * gh * gw)


def tube_masking(noise: torch.Tensor, frames: int, mask_ratio: float) -> RandomMask:
    """The spatial mask of ``noise`` ``(B, S)`` repeated over ``frames`` time steps, as a mask over ``frames * S``
    tokens. Visible tokens come ordered by their position's noise, then by time."""
    batch, spatial = noise.shape
    keep = spatial - num_hidden_tokens(spatial, mask_ratio)
    rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)  # 0 for the position of smallest noise
    time = torch.arange(frames, device=noise.device)
    order = (rank[:, None, :] * frames + time[None, :, None]).reshape(batch, frames * spatial)
    return keep_smallest(order, keep * frames)


def random_video_masking(noise: torch.Tensor, mask_ratio: float) -> RandomMask:
    """Cubes hidden independently: the ``int(ratio * n)`` of largest ``noise`` ``(B, n)``."""
    return keep_smallest(noise, noise.shape[1] - num_hidden_tokens(noise.shape[1], mask_ratio))


def video_masking(masking: VideoMasking, noise: torch.Tensor, frames: int, mask_ratio: float) -> RandomMask:
    """The mask of kind ``masking`` from noise of :func:`video_noise_shape`."""
    if masking == "tube":
        return tube_masking(noise, frames, mask_ratio)
    return random_video_masking(noise, mask_ratio)
