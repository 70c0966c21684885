"""Fixed spatio-temporal sine-cosine position embeddings for video tokens.

VideoConvMAE "extends the spatial position embedding to spatial-temporal embedding" (Sec. 2.4) without saying
how. mimkit keeps the image table and appends a time code (a separable embedding): the first ``3/4`` of the
channels are MAE's 2-D sin-cos table of the token's row and column, the last ``1/4`` a 1-D sin-cos code of its
time step, ``[sin(t*w), cos(t*w)]`` with ``w_k = 1 / 10000**(k / q)``. Tokens are row-major over ``(T', gh, gw)``
(time slowest). The width must be a multiple of 16 so both parts have whole sin/cos pairs.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from mimkit.grids import split_width
from mimkit.pos_embed import sincos_2d


@functools.lru_cache(maxsize=16)
def _table(dim: int, frames: int, gh: int, gw: int) -> torch.Tensor:
    spatial_dim, time_dim = split_width(dim)
    spatial = sincos_2d(spatial_dim, gh, gw).double()
    half = time_dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64, device="cpu") / half)
    angles = torch.arange(frames, dtype=torch.float64, device="cpu")[:, None] * omega
    temporal = torch.cat([angles.sin(), angles.cos()], dim=1)
    table = torch.cat([spatial[None].expand(frames, -1, -1), temporal[:, None].expand(-1, gh * gw, -1)], dim=2).reshape(
        frames * gh * gw, dim
    )
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64, device="cpu"), table]).to(torch.float32)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """``(1 + T'*gh*gw, dim)`` float32 table with a leading zero row (for a class token, as the 2-D tables)."""
    return _table(dim, *grid).clone()


class SpatioTemporalPositions(nn.Module):
    """:func:`sincos_3d` for whatever token grid ``(T', gh, gw)`` the clip has; called like
    :class:`~mimkit.pos_embed.SinCosPositions` (``(1, 1 + L, dim)``, class row first), so MAE's decoder uses it
    unchanged."""

    def __init__(self, dim: int, default_grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.dim = dim
        self.default_grid = tuple(default_grid)
        self.register_buffer("table", sincos_3d(dim, self.default_grid)[None], persistent=False)

    def forward(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if tuple(grid) == self.default_grid:
            return self.table
        return sincos_3d(self.dim, tuple(grid))[None].to(device=self.table.device, dtype=self.table.dtype)
