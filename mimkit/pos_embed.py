"""Fixed 2-D sine-cosine position embeddings (MAE, Sec. 3 / appendix; parity README 2.3).

For a token in row ``i`` and column ``j`` of the patch grid the embedding is
``[sin(j*w), cos(j*w), sin(i*w), cos(i*w)]`` with ``w_k = 1 / 10000**(k / q)``, ``q = dim / 4``:
the first half encodes the column, the second half the row. Computed in float64 and rounded to
float32, which reproduces the tables stored in the authors' checkpoints bit for bit.
"""

from __future__ import annotations

import functools

import torch


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
