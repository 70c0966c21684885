"""LocalMIM's tiny decoder for one tapped layer (LocalMIM Sec. 3.3, Fig. 2b; parity README 6).

Transformer blocks on the tap's token grid (visible features and mask tokens), then an optional rescale from
the feature grid to the target grid and a per-position predictor:

* target cells finer than the features: one 2x2 transposed conv per factor 2, each halving the width, with a
  channels-first LayerNorm and GELU between consecutive ones (x4 is the authors' 56x56 head for ViT);
* coarser: a non-overlapping average pool;
* then a 1x1 conv (the paper's MLP) to the target channels.

The layers sit in one ``nn.Sequential`` with the authors' indices (``pred.0`` .. ``pred.4``), so their keys map
one to one.
"""

from __future__ import annotations

import math

import torch
from timm.layers import LayerNorm2d
from torch import nn

from mimkit.heads.mae_decoder import MAEDecoder


def rescale_head(in_dim: int, out_dim: int, scale: float, norm_eps: float = 1e-6) -> nn.Sequential:
    """Head from a ``(B, in_dim, h, w)`` map to ``(B, out_dim, h*scale, w*scale)``; ``scale`` a power of two."""
    steps = math.log2(scale)
    if steps != int(steps):
        raise ValueError(f"the rescale factor must be a power of two, got {scale}")
    layers: list[nn.Module] = []
    width = in_dim
    if scale < 1:
        pool = round(1 / scale)
        layers.append(nn.AvgPool2d(pool, pool))
    for step in range(int(steps)):
        if step:
            layers += [LayerNorm2d(width, eps=norm_eps), nn.GELU()]
        if width % 2:
            raise ValueError(f"decoder width {in_dim} cannot be halved {int(steps)} times for a x{scale} head")
        layers.append(nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2))
        width //= 2
    layers.append(nn.Conv2d(width, out_dim, kernel_size=1))
    return nn.Sequential(*layers)


class LocalDecoder(nn.Module):
    """Decoder of one tap: ``(B, P + K, in_dim)`` visible tokens (or a dense map with a mask) to
    ``(B, h*w*scale^2, out_dim)`` predictions for every target region, row-major."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        scale: float,
        embed_dim: int = 256,
        depth: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        default_grid: int = 14,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.tokens = MAEDecoder(
            in_dim=in_dim,
            out_dim=None,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
            default_grid=default_grid,
            num_prefix_tokens=num_prefix_tokens,
        )
        self.head = rescale_head(embed_dim, out_dim, scale, norm_eps)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``latent`` holds the prefix and the visible tokens in ``ids_keep`` order (MAE's un-shuffle)."""
        return self.predict(self.tokens(latent, ids_restore, grid), grid)

    def forward_dense(self, features: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``features`` ``(B, h*w, in_dim)`` for every position, row-major; positions where ``mask`` ``(B, h*w)``
        is 1 are replaced by the mask token (their features are never read)."""
        x = self.tokens.embed(features)
        x = torch.where(mask.bool().unsqueeze(-1), self.tokens.mask_token.to(x.dtype), x)
        return self.predict(self.tokens.decode(x, grid), grid)

    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, dim = tokens.shape
        maps = self.head(tokens.transpose(1, 2).reshape(b, dim, *grid))
        return maps.flatten(2).transpose(1, 2)
