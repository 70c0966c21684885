"""Hierarchical Swin-style encoder as MixMAE uses it (MixMAE Sec. 3.2; parity README 5).

4x4 patch embedding with LayerNorm, fixed sin-cos absolute positions, four stages of window-attention blocks
with relative position bias and patch merging between them. Windows are large (14x14 in stages 1-3, 7x7 in
stage 4 at 224 px, i.e. global attention in stages 3-4) and never shifted. LayerNorm eps is 1e-5 everywhere,
as in the authors' code.

Every token may carry a *group* label; attention is then restricted to tokens of the same group (MixMAE's
masked self-attention, Sec. 3.3): a token of one image in a mixed input never attends to another image's
tokens. Without labels the encoder is a plain Swin for fine-tuning and dense prediction, and returns the
stage outputs at 1/4 .. 1/32. Sizes that do not fill whole windows are padded; padded tokens form their own
group, so they never reach a real token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models.swin_transformer import PatchMerging, get_relative_position_index
from torch import nn

from mimkit.backbones.vit import init_mae_weights
from mimkit.patches import grid_size
from mimkit.pos_embed import SinCosPositions

NORM_EPS = 1e-5
PAD_GROUP = -1
"""Group label of padding tokens: no real token shares it, so padding never influences a real token."""


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, ...)`` to ``(B, nW, window*window, ...)``, windows and tokens row-major."""
    b, h, w = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(b, h // window, window, w // window, window, *rest).transpose(2, 3)
    return x.reshape(b, (h // window) * (w // window), window * window, *rest)


def from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_windows`."""
    b = x.shape[0]
    rest = x.shape[3:]
    x = x.reshape(b, h // window, w // window, window, window, *rest).transpose(2, 3)
    return x.reshape(b, h, w, *rest)


def window_group_mask(
    groups: torch.Tensor | None, height: int, width: int, window: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """Additive attention mask ``(B or 1, nW, 1, N, N)``: 0 within a group, -inf across groups.

    ``groups`` ``(B or 1, H, W)`` integer labels or ``None``. When the map does not fill whole windows it is
    padded and the padding gets its own group; ``None`` is returned when there is nothing to mask. Built once
    per stage and shared by all of its blocks.
    """
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        if groups is None:
            groups = torch.zeros(1, height, width, dtype=torch.long)
        groups = F.pad(groups, (0, pad_w, 0, pad_h), value=PAD_GROUP)
    if groups is None:
        return None
    labels = to_windows(groups, window)
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    blocked = torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill_(~same, float("-inf"))
    return blocked.unsqueeze(2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with relative position bias and an optional group mask."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", get_relative_position_index(window, window), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias for the N = window*window tokens of a window."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, group_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, nW, N, C)``; ``group_mask`` from :func:`window_group_mask`, or ``None`` (whole window)."""
        b, nw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, nw, n, 3, self.num_heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = self.position_bias().to(q.dtype)
        if group_mask is not None:
            bias = bias + group_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))`` in non-overlapping, unshifted windows, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, group_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, H, W, C)``; ``group_mask`` from :func:`window_group_mask` for this map and window."""
        b, h, w, c = x.shape
        pad_h, pad_w = (-h) % self.window, (-w) % self.window
        y = self.norm1(x)
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        y = self.attn(to_windows(y, self.window), group_mask)
        y = from_windows(y, self.window, h + pad_h, w + pad_w)[:, :h, :w]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """The blocks of one stage, then (except in the last stage) patch merging to half the resolution and
    twice the width. :meth:`SwinEncoder.encode` runs them, keeping each stage's output before merging."""

    def __init__(
        self, dim: int, num_heads: int, window: int, mlp_ratio: float, drop_paths: Sequence[float], merge: bool
    ):
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, mlp_ratio, dp) for dp in drop_paths)
        self.downsample = PatchMerging(dim, 2 * dim, norm_layer=nn.LayerNorm) if merge else None


class SwinEncoder(nn.Module):
    """MixMAE's Swin encoder. ``forward(images)`` returns the final normed tokens ``(B, L/1024, C4)``."""

    patch_size = 4
    total_stride = 32

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_sizes: Sequence[int] = (14, 14, 14, 7),
        mlp_ratio: float = 4.0,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_sizes) == 4:
            raise ValueError("depths, num_heads and window_sizes need one value per stage (4 each)")
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dim * 2**s for s in range(4))
        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=self.patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm,
            strict_img_size=False,
        )
        self.absolute_pos_embed = SinCosPositions(embed_dim, img_size // self.patch_size)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for stage, (depth, heads, window) in enumerate(zip(depths, num_heads, window_sizes, strict=True)):
            resolution = img_size // self.patch_size // 2**stage
            self.layers.append(
                SwinStage(
                    self.embed_dims[stage],
                    heads,
                    min(window, resolution),
                    mlp_ratio,
                    rates[start : start + depth],
                    merge=stage < 3,
                )
            )
            start += depth
        self.norm = nn.LayerNorm(self.embed_dims[3], eps=NORM_EPS)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(embed_dim, -1))
        for module in self.modules():
            init_mae_weights(module)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, H/4, W/4, C)`` after the patch embedding's norm, before positions."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {images.shape[1]}")
        gh, gw = grid_size(images.shape[-2], images.shape[-1], self.total_stride)
        return self.patch_embed(images).reshape(images.shape[0], gh * 8, gw * 8, -1)

    def encode(
        self,
        tokens: torch.Tensor,
        groups: torch.Tensor | None = None,
        restrict_attention: bool = True,
        group_embeddings: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the stages on ``(B, H/4, W/4, C)`` tokens.

        ``groups``: ``(B or 1, H/32, W/32)`` integer labels on the coarsest grid, read at every stage by nearest
        upsampling. With ``restrict_attention`` attention stays inside a group (MixMAE's masked self-attention);
        ``group_embeddings`` (one ``(K, C_s)`` table per stage) are added to each token by its label at the start
        of every stage (MixMAE's mix embedding, Sec. 3.3). Returns the final normed tokens ``(B, H*W/1024, C4)``
        and the outputs of the four stages' blocks as ``(B, C_s, H/2^(s+2), W/2^(s+2))`` maps.
        """
        b, h, w, c = tokens.shape
        x = tokens + self.absolute_pos_embed((h, w))[:, 1:].reshape(1, h, w, c)
        stage_maps = []
        for stage, layer in enumerate(self.layers):
            factor = 8 // 2**stage
            labels = groups.repeat_interleave(factor, 1).repeat_interleave(factor, 2) if groups is not None else None
            if group_embeddings is not None:
                x = x + group_embeddings[stage][labels]
            restricted = labels if restrict_attention else None
            masks: dict[int, torch.Tensor | None] = {}  # one per window size in the stage (dense variants mix them)
            for block in layer.blocks:
                if block.window not in masks:
                    mask = window_group_mask(restricted, x.shape[1], x.shape[2], block.window, x.dtype)
                    masks[block.window] = mask.to(x.device) if mask is not None else None
                x = block(x, masks[block.window])
            stage_maps.append(x.permute(0, 3, 1, 2))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return self.norm(x).flatten(1, 2), stage_maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(images))[0]

    pool_with_norm = False
    """The authors' Swin fine-tuning pools the normed tokens and adds no norm of its own."""

    @property
    def num_features(self) -> int:
        return self.embed_dims[3]

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C4)`` mean of the final normed tokens (MixMAE fine-tuning)."""
        return self(images).mean(dim=1)

    @property
    def feature_info(self) -> list[dict]:
        """What :meth:`feature_maps` returns: the four stage outputs at 1/4 .. 1/32."""
        return [{"num_chs": c, "reduction": 4 * 2**s, "module": f"layers.{s}"} for s, c in enumerate(self.embed_dims)]

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """Layer of a parameter for layer-wise lr decay: embeddings 0, then every block in running order; a
        patch merging joins the last block of its stage (the SimMIM/MixMAE convention for Swin)."""
        if name.startswith(("patch_embed", "absolute_pos_embed")):
            return (0,)
        if name.startswith("layers."):
            parts = name.split(".")
            stage = int(parts[1])
            block = int(parts[3]) if parts[2] == "blocks" else len(self.layers[stage].blocks) - 1
            return (stage + 1, block)
        return (math.inf,)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs at 1/4, 1/8, 1/16, 1/32 (before each patch merging) for dense prediction."""
        return self.encode(self.embed(images))[1]
