"""Plain ViT encoder, MAE style: patch embedding, fixed sin-cos positions, class token, timm blocks.

With ``ids_keep`` it processes only the visible tokens (MAE Sec. 3 "MAE encoder"); without it, every
token (fine-tuning, feature extraction). Position embeddings are built for whatever grid the input has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.masking import gather_tokens
from mimkit.patches import grid_size
from mimkit.pos_embed import SinCosPositions


class VisionTransformerEncoder(nn.Module):
    """ViT encoder over ``patch_size`` patches; ``forward`` returns ``(B, 1 + tokens, dim)`` (cls first)."""

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            strict_img_size=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = SinCosPositions(embed_dim, img_size // patch_size)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=rate)
            for rate in drop_rates
        )
        self.norm = norm_layer(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE initialisation: xavier-uniform linears and patch projection, cls token N(0, 0.02)."""
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(self.embed_dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            init_mae_weights(module)

    def forward(
        self,
        images: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        return_layers: Sequence[int] = (),
        isolate_layers: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode ``images``; keep only tokens ``ids_keep`` (``(B, K)``) when given.

        ``return_layers`` lists 0-based block indices whose raw outputs are also returned (once per listed
        index, in the listed order). ``isolate_layers`` stops the gradient after each of those blocks: the next
        block reads a detached copy, so a loss on a returned output trains only the blocks since the previous
        one (gradient-isolated training, LocalMIM Table 5).
        """
        grid = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {images.shape[1]}")
        pos = self.pos_embed(grid)
        x = self.patch_embed(images) + pos[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        outputs = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in return_layers:
                outputs[index] = x
                if isolate_layers:
                    x = x.detach()
        x = self.norm(x)
        return (x, [outputs[index] for index in return_layers]) if return_layers else x

    pool_with_norm = True
    """Fine-tuning adds its own norm after pooling (MAE's global pooling drops ``norm``)."""

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` mean of the patch tokens after the last block, before ``norm`` (MAE fine-tuning)."""
        _, (last,) = self(images, return_layers=(len(self.blocks) - 1,))
        return last[:, 1:].mean(dim=1)

    @property
    def feature_info(self) -> list[dict]:
        """What :meth:`feature_maps` returns: every block's output at 1/patch_size (timm's convention)."""
        return [
            {"num_chs": self.embed_dim, "reduction": self.patch_size, "module": f"blocks.{i}"}
            for i in range(len(self.blocks))
        ]

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every block's patch tokens as ``(B, D, H/p, W/p)`` maps (a single scale: a plain ViT reaches 1/4..1/32
        through :class:`mimkit.heads.simple_pyramid.SimpleFeaturePyramid`)."""
        gh, gw = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        _, taps = self(images, return_layers=tuple(range(len(self.blocks))))
        return [t[:, 1:].transpose(1, 2).reshape(len(images), -1, gh, gw) for t in taps]

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """Layer of a parameter for layer-wise lr decay: embeddings 0, block i at i + 1, the rest last."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return (0,)
        if name.startswith("blocks."):
            return (int(name.split(".")[1]) + 1,)
        return (math.inf,)


def init_mae_weights(module: nn.Module) -> None:
    """Xavier-uniform linear weights with zero bias, unit LayerNorms (MAE's ``_init_weights``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
