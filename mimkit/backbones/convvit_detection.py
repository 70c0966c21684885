"""ConvViT as a detection backbone (MCMAE Sec. 2.3, after Li et al.'s "Benchmarking detection transfer learning
with vision transformers").

At detection resolutions stage 3's global attention is too costly, so every stage-3 block except the 1st, 4th,
7th and 11th attends inside 7x7 windows, shifted by half a window in every other local block (as Swin). Global
blocks share one relative position bias table and local blocks another. The blocks keep the pretrained weights;
the bias tables start at zero, so on a grid that fits one window the detection encoder computes exactly what the
pretrained encoder does. Feature maps E1..E4 are as for :class:`ConvViTEncoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import from_windows, to_windows

GLOBAL_BLOCKS = (0, 3, 6, 10)
"""0-based stage-3 blocks that keep global attention (the 1st, 4th, 7th and 11th of ConvViT-B's 11)."""


class RelativePositionBias(nn.Module):
    """A learned bias per head for every 2-D offset up to ``max_size - 1`` in each direction."""

    def __init__(self, num_heads: int, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.table = nn.Parameter(torch.zeros((2 * max_size - 1) ** 2, num_heads))

    def forward(self, height: int, width: int) -> torch.Tensor:
        """``(heads, N, N)`` bias between the N = height*width tokens of a row-major grid."""
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"a {height}x{width} grid exceeds the bias table's {self.max_size}x{self.max_size}")
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


class ConvViTDetectionEncoder(ConvViTEncoder):
    """:class:`ConvViTEncoder` whose stage 3 mixes global and (shifted) window attention; for whole images
    only (fine-tuning, detection), not for masked pretraining."""

    def __init__(
        self,
        *args,
        window: int = 7,
        global_blocks: Sequence[int] = GLOBAL_BLOCKS,
        max_grid: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        heads = self.blocks3[0].attn.num_heads
        self.window = window
        self.global_blocks = frozenset(global_blocks)
        self.global_bias = RelativePositionBias(heads, max_grid)
        self.local_bias = RelativePositionBias(heads, window)

    @classmethod
    def from_encoder(cls, encoder: ConvViTEncoder, **options) -> ConvViTDetectionEncoder:
        """The detection variant of a (pretrained) encoder, with its weights and zero bias tables."""
        detection = cls(**encoder.init_kwargs, **options).to(next(encoder.parameters()).device)
        missing, unexpected = detection.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or set(missing) != {"global_bias.table", "local_bias.table"}:
            raise ValueError(f"encoder does not fit its detection variant: missing {missing}, unexpected {unexpected}")
        return detection

    def run_stage3(self, x: torch.Tensor, grid: tuple[int, int], masked: bool) -> torch.Tensor:
        if masked:
            raise ValueError("the detection encoder runs on whole images; pretrain with ConvViTEncoder")
        height, width = grid
        single_window = height <= self.window and width <= self.window
        global_bias = self.global_bias(height, width).to(x.dtype)
        window_biases: dict[int, torch.Tensor] = {}
        local_index = 0
        for index, block in enumerate(self.blocks3):
            if index in self.global_blocks:
                x = block(x, attn_mask=global_bias)
                continue
            shift = 0 if single_window or local_index % 2 == 0 else self.window // 2
            if shift not in window_biases:
                window_biases[shift] = self.window_attention_bias(grid, shift, x.dtype)
            x = self._windowed(block, x, grid, shift, window_biases[shift])
            local_index += 1
        return x

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
