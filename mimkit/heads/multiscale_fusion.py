"""ConvMAE's multi-scale decoder input (ConvMAE Eq. 1).

``E_d = E3 + StrideConv(E1, 4) + StrideConv(E2, 2)``: the stage-1 and stage-2 features of every visible
token are projected to the stage-3 width by non-overlapping convs and added to the stage-3 output. The
encoder's final norm and the decoder's input projection follow (the paper's "Linear"); in the authors' code
these two convs exist only in the pretraining model and are dropped for fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.backbones.cell_layout import group_cells, strided_conv
from mimkit.backbones.convvit import ConvViTFeatures


class MultiScaleFusion(nn.Module):
    """Stride-4 and stride-2 projections of stages 1 and 2, summed onto stage 3's tokens."""

    def __init__(self, embed_dims: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = embed_dims
        self.stage1_proj = nn.Conv2d(c1, c3, kernel_size=4, stride=4)
        self.stage2_proj = nn.Conv2d(c2, c3, kernel_size=2, stride=2)

    def terms(self, features: ConvViTFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """The two projections ``(B, K, C3)``, row for row with ``features.stage3``."""
        stage1, stage2 = features.conv_stages_at_tokens()
        term1 = strided_conv(group_cells(stage1, 4), self.stage1_proj).flatten(1, 3)
        term2 = strided_conv(group_cells(stage2, 2), self.stage2_proj).flatten(1, 3)
        return term1, term2

    def forward(self, features: ConvViTFeatures) -> torch.Tensor:
        term1, term2 = self.terms(features)
        return features.stage3 + term1 + term2
