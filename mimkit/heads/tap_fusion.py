"""Feature fusion baseline for LocalMIM (Table 7 / appendix A.2, after ConvMAE's Eq. 1).

Instead of a decoder per tap, the features of the lower taps are projected onto the last tap's grid and width
(a non-overlapping conv whose kernel and stride are the grid ratio; a linear layer when the grids agree) and
added to the last tap's features; one decoder then reconstructs a single-scale target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.backbones.taps import Tap
from mimkit.masking import gather_tokens


class TapFusion(nn.Module):
    """Sum of the last tap and strided-conv projections of the others; ``widths``/``strides`` per tap."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        last_width, last_stride = widths[-1], strides[-1]
        self.proj = nn.ModuleList(
            nn.Conv2d(width, last_width, kernel_size=last_stride // stride, stride=last_stride // stride)
            for width, stride in zip(widths[:-1], strides[:-1], strict=True)
        )

    def forward(self, taps: Sequence[Tap], ids_keep: torch.Tensor) -> Tap:
        """The fused last tap. Sparse taps share the last tap's rows; dense maps are projected, then their
        visible rows are gathered when the last tap is sparse."""
        last = taps[-1]
        fused = last.features
        for proj, tap in zip(self.proj, taps[:-1], strict=True):
            if not tap.dense:
                term = F.linear(tap.features, proj.weight.flatten(1), proj.bias)
            else:
                maps = tap.features.transpose(1, 2).reshape(tap.features.shape[0], -1, *tap.grid)
                term = proj(maps).flatten(2).transpose(1, 2)
                if not last.dense:
                    term = gather_tokens(term, ids_keep)
            fused = fused + term
        return Tap(fused, last.grid, last.dense, last.prefix)
