"""Where the rows of a ConvViT stage tensor sit in the image, so conv stages can skip masked regions.

ConvMAE's block-wise mask is made on the stage-3 grid (1/16 of the input) and upsampled to the finer
stages, so every stage-3 token owns an ``r x r`` block of cells at stage 1 (``r = 4``) and stage 2
(``r = 2``). Stage tensors are therefore kept as ``(B, N, r, r, C)``: ``N`` stage-3 tokens, each with its
cells, channels last. With ``ids`` set, the ``N`` rows are only the visible tokens (in ``ids`` order) and the
masked regions are never computed at all; with ``ids=None`` they are every token in row-major order, i.e.
a full feature map.

Pointwise layers (norms, 1x1 convs, MLPs) act on the last axis and do not care about the layout. Only the
depthwise convolution needs neighbours: it scatters the rows into a zero map, convolves, and gathers them
back. Zeros at the masked cells are exactly what ConvMAE's masked convolution feeds the kernel (parity
README 4, "Conv block"), so visible features are identical to the dense computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CellLayout:
    """Rows of stage tensors: stage-3 grid ``grid``; ``ids`` ``(B, N)`` kept tokens, or ``None`` for all."""

    grid: tuple[int, int]
    ids: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def _batch_index(self) -> torch.Tensor:
        return torch.arange(self.ids.shape[0], device=self.ids.device)[:, None]

    def to_map(self, cells: torch.Tensor) -> torch.Tensor:
        """``(B, N, r, r, C)`` to a channels-last map ``(B, gh*r, gw*r, C)``, zeros where no row exists."""
        b, _, r, _, c = cells.shape
        if self.ids is not None:
            full = cells.new_zeros(b, self.num_tokens, r, r, c)
            cells = full.index_put((self._batch_index(), self.ids), cells)
        gh, gw = self.grid
        return cells.reshape(b, gh, gw, r, r, c).transpose(2, 3).reshape(b, gh * r, gw * r, c)

    def from_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_map`: ``(B, H, W, C)`` map to ``(B, N, r, r, C)`` rows."""
        b, h, w, c = feature_map.shape
        gh, gw = self.grid
        r = h // gh
        cells = feature_map.reshape(b, gh, r, gw, r, c).transpose(2, 3).reshape(b, gh * gw, r, r, c)
        return self.select(cells)

    def select(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows of the kept tokens from a tensor with one row per token (``(B, L, ...)``)."""
        if self.ids is None:
            return rows
        return rows[self._batch_index(), self.ids]

    def depthwise_conv(self, cells: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """Apply the depthwise ``conv`` (same padding) to rows, on the map they form."""
        feature_map = self.to_map(cells).permute(0, 3, 1, 2)
        out = F.conv2d(feature_map, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        return self.from_map(out.permute(0, 2, 3, 1))


def group_cells(cells: torch.Tensor, factor: int) -> torch.Tensor:
    """Merge ``factor x factor`` neighbouring cells: ``(B, N, r, r, C)`` -> ``(B, N, r/f, r/f, f*f*C)``.

    The merged vector is ordered ``(dy, dx, channel)``, the order :func:`strided_conv` expects.
    """
    b, n, r, _, c = cells.shape
    s = r // factor
    x = cells.reshape(b, n, s, factor, s, factor, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, n, s, s, factor * factor * c)


def strided_conv(grouped: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """A non-overlapping conv (kernel = stride) on cells already grouped by :func:`group_cells`.

    Equal to ``conv`` on the map, computed as one matrix product per output cell. A 3-D conv works the same way
    when each cell holds its ``(t, y, x, channel)`` values (the video cube embedding).
    """
    out_channels = conv.weight.shape[0]
    weight = conv.weight.movedim(1, -1).reshape(out_channels, -1)
    return F.linear(grouped, weight, conv.bias)


def image_cells(images: torch.Tensor, layout: CellLayout, cell: int) -> torch.Tensor:
    """Pixels of the kept tokens as ``(B, N, r, r, cell*cell*C)`` with ``r = token_size / cell``.

    Each cell holds its ``cell x cell`` pixels in ``(y, x, channel)`` order, ready for :func:`strided_conv`.
    """
    b, c, h, w = images.shape
    gh, gw = layout.grid
    r = h // gh // cell
    x = images.reshape(b, c, gh, r, cell, gw, r, cell).permute(0, 2, 5, 3, 6, 4, 7, 1)
    return layout.select(x.reshape(b, gh * gw, r, r, cell * cell * c))
