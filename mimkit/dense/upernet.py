"""UperNet decode head and the auxiliary FCN head of the ADE20K recipes (BEiT, MAE, ConvMAE Sec. 3.3, MixMAE Sec. 4).

UperNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) as MMSegmentation's
``UPerHead`` configures it for those recipes: a pyramid pooling module (PSPNet, pool scales 1, 2, 3, 6) on the
stride-32 map, 1x1 lateral convs and a top-down FPN over the four maps, a 3x3 conv on each FPN level, every level
upsampled to stride 4 and concatenated, a 3x3 fuse conv, dropout 0.1 and a 1x1 classifier. The auxiliary FCN head
(one 3x3 conv, dropout 0.1, 1x1 classifier) reads the stride-16 map; its loss weighs 0.4 (see
:mod:`mimkit.dense.segmenter`). The recipes use 512 decode and 256 auxiliary channels.

Normalization: GroupNorm (Wu & He, 2018) where the recipes use SyncBatchNorm. A sample's output then depends on that
sample alone, so a training step is the same whatever way the batch is split across processes: a 2-process DDP step
equals the 1-process step, on CPUs (gloo, where SyncBN is unavailable) as on GPUs, and the small batches of the CPU
demos carry no batch-statistics noise. The group count is in :func:`group_norm`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from mimkit.dense.group_norm import group_norm

PAPER_DECODE_CHANNELS = 512
PAPER_AUX_CHANNELS = 256
PAPER_POOL_SCALES = (1, 2, 3, 6)
PAPER_DROPOUT = 0.1
AUX_FEATURE_INDEX = 2
"""The auxiliary head reads the third map (stride 16), as the recipes' ``in_index=2``."""

def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int) -> Conv2dNormActivation:
    """Conv (no bias) + GroupNorm + ReLU, 'same' padding: mmseg's ``ConvModule`` in these heads."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, norm_layer=group_norm)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False``, the setting of every resize in the heads and the segmenter."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Classifier(nn.Sequential):
    """Dropout2d then a 1x1 conv to class logits, started as mmseg's ``conv_seg`` (normal, std 0.01, zero bias)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout), conv)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling (Zhao et al., 2017): average-pool to each scale, 1x1 conv, upsample back, concatenate
    with the input, then a 3x3 conv to ``channels``."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_norm_relu(in_channels, channels, 1))
            for scale in pool_scales
        )
        self.bottleneck = conv_norm_relu(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """UperNet over four maps at strides 4, 8, 16, 32: ``forward(maps) -> (B, num_classes, H/4, W/4)`` logits."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = PAPER_DECODE_CHANNELS,
        pool_scales: Sequence[int] = PAPER_POOL_SCALES,
        dropout: float = PAPER_DROPOUT,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"UperNet reads 4 maps (strides 4, 8, 16, 32), got channels {tuple(in_channels)}")
        self.pyramid_pooling = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(conv_norm_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_norm_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_norm_relu(len(in_channels) * channels, channels, 3)
        self.classifier = Classifier(channels, num_classes, dropout)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [lateral(x) for lateral, x in zip(self.laterals, maps[:-1], strict=True)]
        levels.append(self.pyramid_pooling(maps[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: each coarser level is added into the next finer one
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:])
        outputs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1], strict=True)] + [levels[-1]]
        finest = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([outputs[0], *(resize(x, finest) for x in outputs[1:])], dim=1))
        return self.classifier(fused)


class AuxiliaryFCNHead(nn.Module):
    """The recipes' auxiliary FCN head: one 3x3 conv, dropout, 1x1 classifier on the stride-16 map."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = PAPER_AUX_CHANNELS, dropout: float = PAPER_DROPOUT
    ) -> None:
        super().__init__()
        self.conv = conv_norm_relu(in_channels, channels, 3)
        self.classifier = Classifier(channels, num_classes, dropout)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(maps[AUX_FEATURE_INDEX]))
