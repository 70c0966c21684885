"""ConvViT, ConvMAE's hybrid convolution-transformer encoder (ConvMAE Sec. 2.2 and appendix Table 7).

Stage 1 (1/4 of the input): 4x4 patch embedding, then conv blocks. Stage 2 (1/8): 2x2 strided embedding,
conv blocks. Stage 3 (1/16): 2x2 strided embedding, a linear layer, fixed sin-cos positions and transformer
blocks, without a class token. A conv block is a transformer block whose attention is a depthwise conv.

Stage tensors are laid out per stage-3 token (see :mod:`mimkit.backbones.cell_layout`), so with a block-wise
mask the conv stages compute only the visible regions: the norms and MLPs at masked positions, which the
authors' code computes and then discards, are never run. ``dense_conv_stages`` runs the conv stages on
every position instead, as the authors' code does (needed when the conv is not masked, and kept as the
reference path for benchmarks and tests).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.backbones.cell_layout import CellLayout, group_cells, image_cells, strided_conv
from mimkit.backbones.vit import init_mae_weights
from mimkit.model_configs.parts import TOKEN_SIZE
from mimkit.patches import grid_size
from mimkit.pos_embed import SinCosPositions

CONV_NORM_EPS = 1e-5
"""The authors' conv stages build their LayerNorms with the PyTorch default eps (parity README 2.7)."""


class ConvPatchEmbed(nn.Module):
    """Non-overlapping strided conv, LayerNorm over channels, GELU (the authors' ``patch_embed1..3``)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, norm_eps: float = CONV_NORM_EPS) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(out_dim, eps=norm_eps)
        nn.init.xavier_uniform_(self.proj.weight.view(out_dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, grouped: torch.Tensor) -> torch.Tensor:
        """``grouped`` holds each output cell's input cells, as made by :func:`group_cells`/:func:`image_cells`."""
        return F.gelu(self.norm(strided_conv(grouped, self.proj)))


class ConvBlock(nn.Module):
    """``x + conv2(dwconv(v * conv1(norm1(x))))``, then ``x + mlp(norm2(x))`` (ConvMAE Fig. 1, "masked conv").

    ``v`` (visibility, 1 = visible) multiplies only the input of the depthwise conv, as in the authors' code;
    when rows hold only visible regions, the zeros of the masked regions come from the layout instead.
    1x1 convs are linear layers on channels-last rows.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        kernel_size: int = 5,
        drop_path: float = 0.0,
        norm_eps: float = CONV_NORM_EPS,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv kernel_size must be odd to keep the map size, got {kernel_size}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.conv1 = nn.Linear(dim, dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.conv2 = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, layout: CellLayout, visibility: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(self.norm1(x))
        if visibility is not None:
            y = y * visibility
        x = x + self.drop_path(self.conv2(layout.depthwise_conv(y, self.dwconv)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass
class ConvViTFeatures:
    """Outputs of the three stages.

    stage1 ``(B, N, 4, 4, C1)`` and stage2 ``(B, N, 2, 2, C2)`` are laid out by ``conv_layout``; stage3
    ``(B, K, C3)`` is the last transformer block's output (before the final norm), one row per token of
    ``token_ids`` (``None``: every token, row-major).
    """

    stage1: torch.Tensor
    stage2: torch.Tensor
    stage3: torch.Tensor
    conv_layout: CellLayout
    token_ids: torch.Tensor | None

    def conv_stages_at_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """stage1 and stage2 rows for exactly the tokens stage 3 holds (gathered if the stages ran dense)."""
        if self.conv_layout.ids is None and self.token_ids is not None:
            tokens = CellLayout(self.conv_layout.grid, self.token_ids)
            return tokens.select(self.stage1), tokens.select(self.stage2)
        return self.stage1, self.stage2


class ConvViTEncoder(nn.Module):
    """The ConvViT encoder; ``forward`` returns :class:`ConvViTFeatures`, ``feature_maps`` the E1..E4 maps."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (256, 384, 768),
        depths: Sequence[int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratios: Sequence[float] = (4.0, 4.0, 4.0),
        kernel_size: int = 5,
        norm_eps: float = 1e-6,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.init_kwargs = {
            "in_chans": in_chans,
            "embed_dims": tuple(embed_dims),
            "depths": tuple(depths),
            "num_heads": num_heads,
            "mlp_ratios": tuple(mlp_ratios),
            "kernel_size": kernel_size,
            "norm_eps": norm_eps,
            "img_size": img_size,
            "drop_path_rate": drop_path_rate,
        }
        """The constructor's arguments, so a variant (the detection encoder) can be built like this one."""
        if len(embed_dims) != 3 or len(depths) != 3 or len(mlp_ratios) != 3:
            raise ValueError("embed_dims, depths and mlp_ratios need one value per stage (3 each)")
        c1, c2, c3 = embed_dims
        if c3 % num_heads:
            raise ValueError(f"stage-3 width {c3} must be divisible by num_heads={num_heads}")
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        rates1, rates2, rates3 = rates[: depths[0]], rates[depths[0] : depths[0] + depths[1]], rates[-depths[2] :]
        self.patch_embed1 = ConvPatchEmbed(in_chans, c1, stride=4)
        self.blocks1 = nn.ModuleList(ConvBlock(c1, mlp_ratios[0], kernel_size, r) for r in rates1)
        self.patch_embed2 = ConvPatchEmbed(c1, c2, stride=2)
        self.blocks2 = nn.ModuleList(ConvBlock(c2, mlp_ratios[1], kernel_size, r) for r in rates2)
        self.patch_embed3 = ConvPatchEmbed(c2, c3, stride=2)
        self.patch_embed4 = nn.Linear(c3, c3)
        self.pos_embed = SinCosPositions(c3, img_size // TOKEN_SIZE)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks3 = nn.ModuleList(
            Block(c3, num_heads, mlp_ratios[2], qkv_bias=True, norm_layer=norm_layer, drop_path=r) for r in rates3
        )
        self.norm = norm_layer(c3)
        for module in self.modules():
            init_mae_weights(module)

    def forward(
        self,
        images: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        visibility: torch.Tensor | None = None,
        dense_conv_stages: bool = False,
        isolate_after: Collection[int] = (),
    ) -> ConvViTFeatures:
        """Encode ``images`` (height and width multiples of 16).

        ids_keep: ``(B, K)`` visible stage-3 tokens (block-wise masking). Stage 3 runs on them only; the conv
            stages compute only their regions unless ``dense_conv_stages``.
        visibility: ``(B, L, 4, 4)`` stage-1 cell visibility (1 = visible) for conv stages that run on every
            position: it zeroes the masked cells' embeddings and masks every depthwise conv's input (stage 2
            sees a cell as visible when any of its four stage-1 cells is). ``None`` = nothing masked there.
        isolate_after: stages (0 or 1) whose output the next stage reads as a detached copy, so a loss on such a
            stage's output trains the stages up to it alone (gradient-isolated training, LocalMIM Table 5).
        """
        grid = self.token_grid(images)
        sparse = ids_keep is not None and not dense_conv_stages
        if sparse and visibility is not None:
            raise ValueError("visibility applies to conv stages that run on every position (dense_conv_stages)")
        layout = self.cell_layout(grid, ids_keep if sparse else None)
        vis1 = visibility.unsqueeze(-1).to(images.dtype) if visibility is not None else None
        vis2 = group_cells(vis1, 2).amax(dim=-1, keepdim=True) if vis1 is not None else None

        x = self.patch_embed1(self.input_cells(images, layout))
        if vis1 is not None:
            x = x * vis1
        for block in self.blocks1:
            x = block(x, layout, vis1)
        stage1 = x
        x = self.patch_embed2(group_cells(x.detach() if 0 in isolate_after else x, 2))
        if vis2 is not None:
            x = x * vis2
        for block in self.blocks2:
            x = block(x, layout, vis2)
        stage2 = x
        x = self.patch_embed3(group_cells(x.detach() if 1 in isolate_after else x, 2)).flatten(1, 3)
        x = self.patch_embed4(x) + layout.select(self.pos_embed(grid)[:, 1:].expand(x.shape[0], -1, -1))
        if ids_keep is not None and not sparse:
            x = self.cell_layout(grid, ids_keep).select(x)
        x = self.run_stage3(x, grid, masked=ids_keep is not None)
        return ConvViTFeatures(stage1, stage2, x, layout, ids_keep)

    def token_grid(self, images: torch.Tensor) -> tuple[int, ...]:
        """The stage-3 token grid ``(gh, gw)`` of ``images``, with a clear error for the wrong channel count."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {images.shape[1]}")
        return grid_size(images.shape[-2], images.shape[-1], TOKEN_SIZE)

    def cell_layout(self, grid: tuple[int, ...], ids: torch.Tensor | None) -> CellLayout:
        """Where the rows of the conv-stage tensors sit: the tokens ``ids`` (``None``: all) of ``grid``."""
        return CellLayout(grid, ids)

    def input_cells(self, images: torch.Tensor, layout: CellLayout) -> torch.Tensor:
        """The stage-1 embedding's input: each kept token's 4x4-pixel cells, grouped for :func:`strided_conv`."""
        return image_cells(images, layout, cell=4)

    def run_stage3(self, x: torch.Tensor, grid: tuple[int, int], masked: bool) -> torch.Tensor:
        """The transformer blocks on ``(B, N, C3)`` tokens: every token of ``grid`` (row-major), or the visible
        ones when ``masked``. Global attention here; the detection variant attends in windows."""
        for block in self.blocks3:
            x = block(x)
        return x

    pool_with_norm = True
    """Fine-tuning adds its own norm after pooling (the authors' global pooling leaves ``norm`` unused)."""

    @property
    def num_features(self) -> int:
        return self.embed_dims[2]

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C3)`` mean of the stage-3 tokens after the last block (ConvMAE fine-tuning)."""
        return self(images).stage3.mean(dim=1)

    @property
    def feature_info(self) -> list[dict]:
        """What :meth:`feature_maps` returns: E1..E4 at 1/4, 1/8, 1/16, 1/32."""
        c1, c2, c3 = self.embed_dims
        modules = ("blocks1", "blocks2", "blocks3", "blocks3")
        return [
            {"num_chs": c, "reduction": r, "module": m}
            for c, r, m in zip((c1, c2, c3, c3), (4, 8, 16, 32), modules, strict=True)
        ]

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """Layer of a parameter for layer-wise lr decay: every conv and transformer block is a layer, in running
        order after the stage-1 embedding (layer 0); a later stage's embedding joins the last block before it."""
        stage = name[len("blocks") : name.index(".")] if name.startswith("blocks") else None
        if stage is not None:
            return (int(stage), int(name.split(".")[1]))
        if name.startswith("patch_embed1"):
            return (0,)
        if name.startswith("patch_embed2"):
            return (1, len(self.blocks1) - 1)
        if name.startswith(("patch_embed3", "patch_embed4", "pos_embed")):
            return (2, len(self.blocks2) - 1)
        return (math.inf,)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """E1..E4 of the whole image as ``(B, C, H/s, W/s)`` maps for s = 4, 8, 16, 32 (ConvMAE Sec. 2.3).

        E1, E2 are the conv-stage outputs, E3 the last transformer block's output, E4 a 2x2 max-pool of E3.
        """
        features = self(images)
        layout = features.conv_layout
        e1 = layout.to_map(features.stage1).permute(0, 3, 1, 2)
        e2 = layout.to_map(features.stage2).permute(0, 3, 1, 2)
        gh, gw = layout.grid
        e3 = features.stage3.transpose(1, 2).reshape(images.shape[0], -1, gh, gw)
        return [e1, e2, e3, F.max_pool2d(e3, 2)]
