"""MAE's lightweight transformer decoder (MAE Sec. 3 "MAE decoder"; parity README 2.5).

The visible tokens are projected to the decoder width, mask tokens are appended and everything is
un-shuffled back to spatial order with ``ids_restore``; a few transformer blocks then predict every patch.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.backbones.vit import init_mae_weights
from mimkit.masking import gather_tokens
from mimkit.pos_embed import SinCosPositions


class MAEDecoder(nn.Module):
    """Decoder from ``(B, P + K, in_dim)`` encoder tokens to ``(B, L, out_dim)`` predictions.

    ``num_prefix_tokens`` (P) is 1 when the encoder output starts with a class token (MAE) and 0 when it
    has none (ConvMAE); prefix tokens take part in attention and are dropped from the predictions.
    ``out_dim=None`` leaves out the output projection: the result is the normed decoder tokens, for heads that
    predict from the token map instead (LocalMIM's rescaling heads).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        default_grid: int = 14,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        if num_prefix_tokens not in (0, 1):
            raise ValueError(f"num_prefix_tokens must be 0 or 1, got {num_prefix_tokens}")
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(in_dim, embed_dim)
        self.pos_embed = SinCosPositions(embed_dim, default_grid)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim) if out_dim is not None else nn.Identity()
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            init_mae_weights(module)

    @classmethod
    def for_pixels(
        cls,
        config: Any,
        in_dim: int,
        patch_size: int,
        num_prefix_tokens: int,
        norm_eps: float = 1e-6,
        mlp_ratio: float | None = None,
        extra_out_dim: int = 0,
    ) -> MAEDecoder:
        """A decoder predicting the ``patch_size`` pixels of every patch, sized by a method config's
        ``decoder_embed_dim``, ``decoder_depth``, ``decoder_num_heads``, ``mlp_ratio``, ``img_size``, ``in_chans``.

        ``extra_out_dim`` more outputs follow the pixels in each prediction (MR-MAE's high-level targets at the
        decoder)."""
        return cls(
            in_dim=in_dim,
            out_dim=patch_size**2 * config.in_chans + extra_out_dim,
            embed_dim=config.decoder_embed_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_num_heads,
            mlp_ratio=config.mlp_ratio if mlp_ratio is None else mlp_ratio,
            norm_eps=norm_eps,
            default_grid=config.img_size // patch_size,
            num_prefix_tokens=num_prefix_tokens,
        )

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        num_masked = ids_restore.shape[1] - visible.shape[1]
        tokens = torch.cat([visible, self.mask_token.expand(x.shape[0], num_masked, -1)], dim=1)
        tokens = gather_tokens(tokens, ids_restore)
        return self.decode(torch.cat([prefix, tokens], dim=1), grid)

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predictions for already embedded tokens of the whole grid (prefix tokens first, then row-major):
        positions, blocks, norm, output projection; prefix tokens are dropped from the result."""
        x = tokens + self.pos_embed(grid)[:, 1 - self.num_prefix_tokens :]
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x)[:, self.num_prefix_tokens :])
