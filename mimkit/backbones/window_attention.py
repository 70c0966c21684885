"""Window attention for the transformer blocks of a pretrained encoder at dense-prediction resolutions (Li et al.,
"Benchmarking detection transfer learning with vision transformers"; ViTDet; MCMAE Sec. 2.3).

A few *global* blocks attend over the whole token grid; every other (*local*) block attends inside
``window x window`` windows of the grid padded to whole windows, optionally shifted by half a window in every other
local block (Swin). Global blocks share one learned relative position bias table and local blocks another; both
start at zero, so on a grid that fits one window (no shift) the blocks compute exactly what they computed in
pretraining. The blocks are timm ``Block``\\ s, which take the biases and masks as ``attn_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.backbones.swin import from_windows, to_windows
from mimkit.errors import MimkitError

MAX_GRID = 64
"""Largest token grid side the global bias table covers (1024 px at 1/16, the papers' detection size)."""


def evenly_spaced(depth: int, count: int, from_first: bool) -> tuple[int, ...]:
    """``count`` evenly spaced 0-based indices of ``depth`` blocks, from the first to the last block
    (``from_first``, MCMAE's 0, 3, 6, 10 of 11) or one spacing in and ending at the last (ViTDet's 2, 5, 8, 11)."""
    if from_first:
        return tuple((k * (depth - 1)) // max(count - 1, 1) for k in range(count))
    return tuple((k + 1) * depth // count - 1 for k in range(count))


def scaled_blocks(depth: int, paper_blocks: Sequence[int], paper_depth: int) -> tuple[int, ...]:
    """A paper's choice of blocks (0-based, of ``paper_depth``) scaled to ``depth`` blocks: as many for a deeper
    stage (ViTDet keeps 4 global blocks for ViT-L/H), proportionally fewer but at least one for a shallower one,
    evenly spaced and anchored at the first block when the paper's is (see :func:`evenly_spaced`)."""
    count = min(len(paper_blocks), depth, math.ceil(depth * len(paper_blocks) / paper_depth))
    return evenly_spaced(depth, count, from_first=paper_blocks[0] == 0)


def checked_global_blocks(global_blocks: Sequence[int], depth: int) -> frozenset[int]:
    """``global_blocks`` as a set, after checking that each names one of ``depth`` blocks (0-based)."""
    outside = [index for index in global_blocks if not 0 <= index < depth]
    if outside:
        raise MimkitError(f"global blocks {outside} do not exist: the attention stage has blocks 0..{depth - 1}")
    return frozenset(global_blocks)


def checked_window(window: int) -> int:
    if window < 1:
        raise MimkitError(f"the attention window must be at least 1 token wide, got {window}")
    return window


class RelativePositionBias(nn.Module):
    """A learned bias per head for every 2-D offset up to ``max_size - 1`` in each direction."""

    def __init__(self, num_heads: int, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.table = nn.Parameter(torch.zeros((2 * max_size - 1) ** 2, num_heads))

    def forward(self, height: int, width: int) -> torch.Tensor:
        """``(heads, N, N)`` bias between the N = height*width tokens of a row-major grid."""
        if height > self.max_size or width > self.max_size:
            raise MimkitError(
                f"a {height}x{width} token grid exceeds the relative position bias table's {self.max_size}x"
                f"{self.max_size} (inputs up to {16 * self.max_size} px at 1/16); lower data.img_size"
            )
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coords = torch.stack([rows.flatten(), cols.flatten()]).to(self.table.device)
        offset = coords[:, :, None] - coords[:, None, :] + self.max_size - 1
        return self.table[offset[0] * (2 * self.max_size - 1) + offset[1]].permute(2, 0, 1)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """``(nW, N, N)`` additive mask for windows over a ``height x width`` map padded to whole windows and rolled
    back by ``shift``: tokens attend only within their region of the unrolled map (Swin's cyclic-shift mask) and
    never to padding."""
    padded_h, padded_w = height + (-height) % window, width + (-width) % window
    labels = torch.zeros(padded_h, padded_w, dtype=torch.long, device=device)
    if shift:
        bounds = [(0, -window), (-window, -shift), (-shift, None)]
        for i, (top, bottom) in enumerate(bounds):
            for j, (left, right) in enumerate(bounds):
                labels[top:bottom, left:right] = 3 * i + j
    padding = torch.ones(padded_h, padded_w, dtype=torch.bool, device=device)
    padding[:height, :width] = False
    padding = torch.roll(padding, (-shift, -shift), dims=(0, 1))
    labels = torch.where(padding, torch.full_like(labels, -1), labels)
    windows = to_windows(labels[None], window)[0]
    same = windows[:, :, None] == windows[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill_(~same, float("-inf"))


class WindowedBlocks:
    """Mixin for an ``nn.Module`` that runs timm blocks over a token grid with global and window attention.

    :meth:`init_window_attention` sets the window, the global blocks, whether local blocks alternate shifted
    windows, and the two shared bias tables (a table no block uses is not made, so every parameter trains).
    """

    window: int
    global_blocks: frozenset[int]
    shift_windows: bool
    global_bias: RelativePositionBias | None
    local_bias: RelativePositionBias | None

    def init_window_attention(
        self,
        num_heads: int,
        depth: int,
        window: int,
        global_blocks: Sequence[int],
        shift_windows: bool,
        max_grid: int = MAX_GRID,
    ) -> None:
        self.window = checked_window(window)
        self.global_blocks = checked_global_blocks(global_blocks, depth)
        self.shift_windows = shift_windows
        self.global_bias = RelativePositionBias(num_heads, max_grid) if self.global_blocks else None
        self.local_bias = RelativePositionBias(num_heads, window) if len(self.global_blocks) < depth else None

    def run_blocks(
        self, blocks: Sequence[nn.Module], x: torch.Tensor, grid: tuple[int, int], return_blocks: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``blocks`` on ``(B, h*w, C)`` tokens of a row-major ``grid``; returns the last output and the
        outputs of the blocks in ``return_blocks`` (in that order)."""
        height, width = grid
        single_window = height <= self.window and width <= self.window
        global_bias = self.global_bias(height, width).to(x.dtype) if self.global_bias is not None else None
        window_biases: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        local_index = 0
        for index, block in enumerate(blocks):
            if index in self.global_blocks:
                x = block(x, attn_mask=global_bias)
            else:
                alternate = self.shift_windows and not single_window and local_index % 2 == 1
                shift = self.window // 2 if alternate else 0
                if shift not in window_biases:
                    window_biases[shift] = self.window_attention_bias(grid, shift, x.dtype)
                x = self._windowed(block, x, grid, shift, window_biases[shift])
                local_index += 1
            outputs[index] = x
        return x, [outputs[index] for index in return_blocks]

    def window_attention_bias(self, grid: tuple[int, int], shift: int, dtype: torch.dtype) -> torch.Tensor:
        """``(nW, heads, N, N)``: the shared local relative position bias plus the shifted-window mask of a
        ``grid`` map; the same for every local block with this ``shift``, so a stage builds it once."""
        mask = shifted_window_mask(*grid, self.window, shift, self.local_bias.table.device)
        return (mask[:, None] + self.local_bias(self.window, self.window)[None]).to(dtype)

    def _windowed(
        self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int], shift: int, window_bias: torch.Tensor
    ) -> torch.Tensor:
        """One block on the tokens of each ``window x window`` window (map padded to whole windows, rolled by
        ``shift``), with ``window_bias`` from :meth:`window_attention_bias`; the MLP half is per token, so
        running the whole block per window is exact."""
        batch, _, channels = x.shape
        height, width = grid
        window = self.window
        pad_h, pad_w = (-height) % window, (-width) % window
        maps = F.pad(x.reshape(batch, height, width, channels), (0, 0, 0, pad_w, 0, pad_h))
        maps = torch.roll(maps, (-shift, -shift), dims=(1, 2))
        windows = to_windows(maps, window)
        num_windows = windows.shape[1]
        attn_mask = window_bias.expand(batch, -1, -1, -1, -1).flatten(0, 1)
        out = block(windows.flatten(0, 1), attn_mask=attn_mask).reshape(batch, num_windows, -1, channels)
        maps = from_windows(out, window, height + pad_h, width + pad_w)
        maps = torch.roll(maps, (shift, shift), dims=(1, 2))[:, :height, :width]
        return maps.reshape(batch, height * width, channels)
