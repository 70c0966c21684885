"""Multi-scale maps from a plain ViT's single 1/16 map, for detection and segmentation necks.

As ViTDet's simple feature pyramid (Li et al. 2022), the rescaling part: two stride-2 deconvolutions (with
LayerNorm and GELU between them) give 1/4, one gives 1/8, the map itself is 1/16 and a 2x2 max-pool 1/32.
Channels shrink with resolution: D/4, D/2, D, D. A neck such as torchvision's ``FeaturePyramidNetwork`` follows.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn


class SimpleFeaturePyramid(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"the ViT width {dim} must be divisible by 4")
        self.channels = (dim // 4, dim // 2, dim, dim)
        self.to_quarter = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.to_eighth = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.to_thirty_second = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, D, H/16, W/16)`` to maps at 1/4, 1/8, 1/16 and 1/32."""
        return [self.to_quarter(x), self.to_eighth(x), x, self.to_thirty_second(x)]
