"""A plain ViT as a dense-prediction backbone, as ViTDet (Li et al. 2022) and "Benchmarking detection transfer
learning with vision transformers" use MAE's ViT, the baseline MCMAE and MixMAE compare against.

* Every block attends inside 14x14-token windows (ViTDet's window at 1024 px) except a few global ones (2, 5, 8,
  11 of 12, scaled to other depths); the grid is padded to whole windows and windows are not shifted (ViTDet).
  Relative position biases are two shared tables, one for global and one for local blocks, starting at zero (as the
  ConvViT variant; ViTDet's per-block decomposed tables also start at zero for MAE weights).
* No class token: windows have no place for it, and ViTDet drops it too. The module takes the pretrained
  encoder's patch embedding, blocks and final norm (the same modules, not copies) and leaves the class token out,
  so on a grid that fits one window it computes what the pretrained blocks compute on the patch tokens alone.
* Positions are the fixed sin-cos table of whatever grid the input has (no interpolation needed).
* Maps come out at 1/16 for :class:`mimkit.heads.simple_pyramid.SimpleFeaturePyramid`: another patch size (ViT-H's
  14) has its patch-embedding kernel resampled to 16 pixels (ViTDet does the same for ViT-H), with timm's
  ``resample_patch_embed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import PatchEmbed, resample_patch_embed
from torch import nn

from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.backbones.window_attention import MAX_GRID, WindowedBlocks, scaled_blocks
from mimkit.grids import grid_size

PATCH_SIZE = 16
WINDOW = 14
"""ViTDet's window (tokens) for ViT-B/L/H at 1024 px."""
GLOBAL_BLOCKS = (2, 5, 8, 11)
"""ViTDet's global blocks of ViT-B's 12 (ViT-L: 5, 11, 17, 23; ViT-H: 7, 15, 23, 31, which the scaling gives)."""


def patch_embed_at(patch_embed: PatchEmbed, patch_size: int) -> PatchEmbed:
    """``patch_embed`` itself, or a copy over ``patch_size`` pixels with its kernel resampled to that size."""
    if patch_embed.patch_size == (patch_size, patch_size):
        return patch_embed
    proj = patch_embed.proj
    resized = PatchEmbed(
        img_size=None,
        patch_size=patch_size,
        in_chans=proj.in_channels,
        embed_dim=proj.out_channels,
        strict_img_size=False,
    ).to(proj.weight.device)
    with torch.no_grad():
        resized.proj.weight.copy_(resample_patch_embed(proj.weight, [patch_size, patch_size]))
        resized.proj.bias.copy_(proj.bias)
    return resized


class ViTDetectionEncoder(WindowedBlocks, nn.Module):
    """A pretrained :class:`VisionTransformerEncoder` with window attention and no class token; ``forward`` gives
    chosen blocks' outputs as ``(B, D, H/16, W/16)`` maps."""

    def __init__(
        self,
        encoder: VisionTransformerEncoder,
        window: int = WINDOW,
        global_blocks: Sequence[int] | None = None,
        max_grid: int = MAX_GRID,
    ) -> None:
        super().__init__()
        self.in_chans = encoder.in_chans
        self.embed_dim = encoder.embed_dim
        self.patch_embed = patch_embed_at(encoder.patch_embed, PATCH_SIZE)
        self.pos_embed = encoder.pos_embed
        self.blocks = encoder.blocks
        self.norm = encoder.norm
        depth = len(self.blocks)
        if global_blocks is None:
            global_blocks = scaled_blocks(depth, GLOBAL_BLOCKS, paper_depth=12)
        heads = self.blocks[0].attn.num_heads
        self.init_window_attention(heads, depth, window, global_blocks, shift_windows=False, max_grid=max_grid)

    def forward(self, images: torch.Tensor, return_blocks: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the blocks in ``return_blocks`` as ``(B, D, H/16, W/16)`` maps, the last block's
        through the pretrained final norm (which pretraining put after it)."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {images.shape[1]}")
        grid = grid_size(images.shape[-2], images.shape[-1], PATCH_SIZE)
        x = self.patch_embed(images) + self.pos_embed(grid)[:, 1:]
        _, taps = self.run_blocks(self.blocks, x, grid, return_blocks)
        last = len(self.blocks) - 1
        taps = [self.norm(tap) if index == last else tap for index, tap in zip(return_blocks, taps, strict=True)]
        return [tap.transpose(1, 2).reshape(len(images), self.embed_dim, *grid) for tap in taps]

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """The ViT's rule (embeddings 0, block i at i + 1); the new bias tables come last, with the final norm."""
        return VisionTransformerEncoder.layer_ordinal(self, name)
