"""The normalization of every dense head (UperNet, FPN, Mask R-CNN heads): GroupNorm instead of the recipes'
SyncBN, so a training step does not depend on how the batch is split over processes (and runs on CPUs)."""

from __future__ import annotations

import math

from torch import nn

GROUP_NORM_GROUPS = 32
MIN_CHANNELS_PER_GROUP = 4


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu & He's default) where that leaves at least 4 channels a group, fewer groups
    otherwise (always a divisor of ``channels``): 512 -> 32 groups, 16 -> 4, 3 -> 1. Groups of one channel would
    zero the 1x1 pyramid-pooling branch, which a small CPU-sized head would otherwise get."""
    groups = math.gcd(channels, min(GROUP_NORM_GROUPS, max(1, channels // MIN_CHANNELS_PER_GROUP)))
    return nn.GroupNorm(groups, channels)
