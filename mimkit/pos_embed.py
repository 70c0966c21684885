"""Fixed 2-D sine-cosine position embeddings (MAE, Sec. 3 / appendix; parity README 2.3).

For a token in row ``i`` and column ``j`` of the patch grid the embedding is
``[sin(j*w), cos(j*w), sin(i*w), cos(i*w)]`` with ``w_k = 1 / 10000**(k / q)``, ``q = dim / 4``:
the first half encodes the column, the second half the row. Computed in float64 and rounded to
float32, which reproduces the tables stored in the authors' checkpoints bit for bit.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=32)
def _sincos_table(dim: int, grid_h: int, grid_w: int, with_cls_row: bool) -> torch.Tensor:
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device="cpu") / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64, device="cpu"),
        torch.arange(grid_w, dtype=torch.float64, device="cpu"),
        indexing="ij",
    )
    col_angles = cols.reshape(-1, 1) * omega
    row_angles = rows.reshape(-1, 1) * omega
    table = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    if with_cls_row:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64, device="cpu"), table], dim=0)
    return table.to(torch.float32)


def sincos_2d(dim: int, grid_h: int, grid_w: int, with_cls_row: bool = False) -> torch.Tensor:
    """Return the ``(grid_h*grid_w [+1], dim)`` float32 table, rows in row-major token order.

    ``with_cls_row`` prepends a zero row for a class token, as the MAE checkpoints store it.
    """
    return _sincos_table(dim, grid_h, grid_w, with_cls_row).clone()


class SinCosPositions(nn.Module):
    """Fixed sin-cos table with a zero class-token row, for whatever patch grid the input has.

    The table of the default grid lives in a (non-persistent) buffer so it moves with the module and costs
    nothing per step; other grids are computed on demand.
    """

    def __init__(self, dim: int, default_grid: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer(
            "table", sincos_2d(dim, default_grid, default_grid, with_cls_row=True)[None], persistent=False
        )
        self.default_grid = (default_grid, default_grid)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, 1 + gh*gw, dim)``: the class row first, then the tokens in row-major order."""
        if tuple(grid) == self.default_grid:
            return self.table
        table = sincos_2d(self.dim, grid[0], grid[1], with_cls_row=True)
        return table[None].to(device=self.table.device, dtype=self.table.dtype)
