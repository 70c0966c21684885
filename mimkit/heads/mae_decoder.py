"""MAE's lightweight transformer decoder (MAE Sec. 3 "MAE decoder"; parity README 2.5).

The visible tokens are projected to the decoder width, mask tokens are appended and everything is
un-shuffled back to spatial order with ``ids_restore``; a few transformer blocks then predict every patch.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.backbones.vit import init_mae_weights
from mimkit.masking import gather_tokens
from mimkit.pos_embed import SinCosPositions


class MAEDecoder(nn.Module):
    """Decoder from ``(B, 1 + K, in_dim)`` encoder tokens (cls first) to ``(B, L, out_dim)`` predictions."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        default_grid: int = 14,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, embed_dim)
        self.pos_embed = SinCosPositions(embed_dim, default_grid)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            init_mae_weights(module)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(latent)
        cls, visible = x[:, :1], x[:, 1:]
        num_masked = ids_restore.shape[1] - visible.shape[1]
        tokens = torch.cat([visible, self.mask_token.expand(x.shape[0], num_masked, -1)], dim=1)
        tokens = gather_tokens(tokens, ids_restore)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed(grid)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]
