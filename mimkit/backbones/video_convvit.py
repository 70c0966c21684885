"""Video ConvViT, the encoder of VideoConvMAE (ConvMAE / MCMAE Sec. 2.4).

ConvMAE's ConvViT with three parts made spatio-temporal, as Sec. 2.4 lists them:

* **cube embedding**: stage 1 embeds ``tubelet x 4 x 4`` pixel cubes (a 3-D conv, kernel = stride = (2, 4, 4));
  stages 2 and 3 keep the time axis and halve the space (kernel = stride = (1, 2, 2), i.e. ConvViT's 2x2
  embeddings applied per time step);
* **masked 3-D convolution**: the conv blocks' depthwise conv is ``t x k x k`` (3 x 5 x 5 by default; the paper
  gives no temporal size, 3 is the smallest that mixes neighbouring time steps);
* **spatio-temporal positions** for the stage-3 transformer (:mod:`mimkit.pos_embed_video`).

A stage-3 token is a ``tubelet x 16 x 16`` pixel cube; tokens are row-major over ``(T', gh, gw)``. The masks
(tube or random) are made on that token grid, so, as for images, stage tensors are kept per stage-3 token
(:class:`VideoCellLayout`) and with ``ids_keep`` the conv stages compute only the visible cubes: the depthwise
conv scatters them into a zero volume, which is exactly ConvMAE's masked convolution, so no masked pixel of any
frame reaches a visible feature. ``dense_conv_stages`` computes every position and masks each depthwise conv's
input instead (the reference path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.backbones.cell_layout import CellLayout
from mimkit.backbones.convvit import TOKEN_SIZE, ConvViTEncoder, ConvViTFeatures
from mimkit.patches import grid_size
from mimkit.pos_embed_video import SpatioTemporalPositions

CELL = 4
"""Pixels per stage-1 cell side (the cube embedding's spatial stride)."""


@dataclass(frozen=True)
class VideoCellLayout(CellLayout):
    """A :class:`CellLayout` whose token grid stacks ``frames`` time steps of ``gh x gw`` tokens (``grid`` is
    ``(frames * gh, gw)``, so token ``t*gh*gw + i*gw + j`` sits at row ``t*gh + i``); the depthwise conv runs on
    the ``(frames, H, W)`` volume."""

    frames: int = 1

    def depthwise_conv(self, cells: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
        feature_map = self.to_map(cells)
        b, h, w, c = feature_map.shape
        volume = feature_map.reshape(b, self.frames, h // self.frames, w, c).permute(0, 4, 1, 2, 3)
        out = F.conv3d(volume, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        return self.from_map(out.permute(0, 2, 3, 4, 1).reshape(b, h, w, c))


def video_cells(videos: torch.Tensor, layout: VideoCellLayout, tubelet: int) -> torch.Tensor:
    """Pixels of the kept tokens as ``(B, N, 4, 4, tubelet*4*4*C)``: each stage-1 cell holds its pixel cube in
    ``(t, y, x, channel)`` order, ready for the cube embedding's :func:`strided_conv`."""
    b, c, t, h, w = videos.shape
    frames = t // tubelet
    gh, gw = h // TOKEN_SIZE, w // TOKEN_SIZE
    r = TOKEN_SIZE // CELL
    x = videos.reshape(b, c, frames, tubelet, gh, r, CELL, gw, r, CELL)
    x = x.permute(0, 2, 4, 7, 5, 8, 3, 6, 9, 1)
    return layout.select(x.reshape(b, frames * gh * gw, r, r, tubelet * CELL * CELL * c))


class VideoConvViTEncoder(ConvViTEncoder):
    """The video ConvViT; ``forward(videos)`` on ``(B, C, T, H, W)`` clips returns :class:`ConvViTFeatures` whose
    rows are spatio-temporal tokens. Pooling, layer-wise lr decay and the stage-3 blocks are ConvViT's."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (256, 384, 768),
        depths: Sequence[int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratios: Sequence[float] = (4.0, 4.0, 4.0),
        kernel_size: int = 5,
        temporal_kernel_size: int = 3,
        tubelet_size: int = 2,
        norm_eps: float = 1e-6,
        img_size: int = 224,
        num_frames: int = 16,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            in_chans, embed_dims, depths, num_heads, mlp_ratios, kernel_size, norm_eps, img_size, drop_path_rate
        )
        if temporal_kernel_size % 2 == 0 or temporal_kernel_size < 1:
            raise ValueError(f"temporal_kernel_size must be a positive odd number, got {temporal_kernel_size}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames={num_frames} must be a multiple of tubelet_size={tubelet_size}")
        self.init_kwargs.update(
            temporal_kernel_size=temporal_kernel_size, tubelet_size=tubelet_size, num_frames=num_frames
        )
        self.tubelet_size = tubelet_size
        c1, _, c3 = self.embed_dims
        cube = (tubelet_size, CELL, CELL)
        self.patch_embed1.proj = nn.Conv3d(in_chans, c1, kernel_size=cube, stride=cube)
        nn.init.xavier_uniform_(self.patch_embed1.proj.weight.view(c1, -1))
        nn.init.zeros_(self.patch_embed1.proj.bias)
        kernel = (temporal_kernel_size, kernel_size, kernel_size)
        for block in (*self.blocks1, *self.blocks2):
            dim = block.dwconv.in_channels
            block.dwconv = nn.Conv3d(dim, dim, kernel, padding=tuple(k // 2 for k in kernel), groups=dim)
        self.pos_embed = SpatioTemporalPositions(c3, (num_frames // tubelet_size, *(img_size // TOKEN_SIZE,) * 2))

    def token_grid(self, videos: torch.Tensor) -> tuple[int, int, int]:
        """``(T', gh, gw)`` of a clip, with clear errors for the wrong shape."""
        if videos.dim() != 5:
            raise ValueError(
                f"a video encoder takes (batch, channels, frames, height, width), got {tuple(videos.shape)}"
            )
        if videos.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {videos.shape[1]}")
        if videos.shape[2] % self.tubelet_size:
            raise ValueError(f"{videos.shape[2]} frames are not a multiple of the cube's {self.tubelet_size}")
        return (videos.shape[2] // self.tubelet_size, *grid_size(videos.shape[-2], videos.shape[-1], TOKEN_SIZE))

    def cell_layout(self, grid: tuple[int, ...], ids: torch.Tensor | None) -> VideoCellLayout:
        return layout_of(grid, ids)

    def input_cells(self, videos: torch.Tensor, layout: CellLayout) -> torch.Tensor:
        return video_cells(videos, layout, self.tubelet_size)

    def forward(
        self, videos: torch.Tensor, ids_keep: torch.Tensor | None = None, dense_conv_stages: bool = False
    ) -> ConvViTFeatures:
        """Encode ``videos``; ``ids_keep`` ``(B, K)``: the visible tokens (stage 3 runs on them only, and the conv
        stages compute only their cubes unless ``dense_conv_stages``, which masks every depthwise conv's input
        instead: masks are token-aligned, so every stage-1 cell of a token shares its visibility)."""
        visibility = None
        if ids_keep is not None and dense_conv_stages:
            cells = TOKEN_SIZE // CELL
            visibility = videos.new_zeros(videos.shape[0], math.prod(self.token_grid(videos)))
            visibility = visibility.scatter_(1, ids_keep, 1.0)[:, :, None, None].expand(-1, -1, cells, cells)
        return super().forward(videos, ids_keep, visibility, dense_conv_stages)

    @property
    def feature_info(self) -> list[dict]:
        """What :meth:`feature_maps` returns: E1..E3 at 1/4, 1/8, 1/16 of the frame size, ``T / tubelet`` steps."""
        return [
            {"num_chs": c, "reduction": r, "module": m}
            for c, r, m in zip(self.embed_dims, (4, 8, 16), ("blocks1", "blocks2", "blocks3"), strict=True)
        ]

    def feature_maps(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """E1..E3 of the whole clip as ``(B, C, T', H/s, W/s)`` volumes for s = 4, 8, 16."""
        features = self(videos)
        frames = features.conv_layout.frames
        maps = [features.conv_layout.to_map(features.stage1), features.conv_layout.to_map(features.stage2)]
        volumes = [m.reshape(m.shape[0], frames, m.shape[1] // frames, m.shape[2], -1) for m in maps]
        _, gh, gw = self.token_grid(videos)
        volumes.append(features.stage3.reshape(videos.shape[0], frames, gh, gw, -1))
        return [v.permute(0, 4, 1, 2, 3) for v in volumes]


def layout_of(grid: tuple[int, int, int], ids: torch.Tensor | None) -> VideoCellLayout:
    """The layout of the tokens ``ids`` (``None``: all) on token grid ``(T', gh, gw)``."""
    frames, gh, gw = grid
    return VideoCellLayout((frames * gh, gw), ids, frames)
