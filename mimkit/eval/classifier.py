"""A classifier on a pretrained encoder, as all four papers fine-tune and probe (MAE appendix A.2, A.3).

Fine-tuning: global average pooling of the encoder's last tokens, a LayerNorm where the encoder's own recipe
has one (``fc_norm``), and a linear head. Linear probing: the same pooled features from a frozen encoder,
BatchNorm without affine parameters (over the global batch of all processes), and a linear head (MAE
appendix A.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.layers import trunc_normal_
from torch import nn

from mimkit.eval.global_batch_norm import GlobalBatchNorm1d

ENCODER_PREFIX = "encoder."


class Classifier(nn.Module):
    """``encoder`` (any mimkit backbone with ``pooled_features``) + pooling norm + linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, linear_probe: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.encoder = encoder
        self.linear_probe = linear_probe
        dim = encoder.num_features
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if encoder.pool_with_norm and not linear_probe else nn.Identity()
        linear = nn.Linear(dim, num_classes)
        # MAE's heads start near zero: std 2e-5 for fine-tuning, 0.01 for the probe.
        trunc_normal_(linear.weight, std=0.01 if linear_probe else 2e-5)
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(GlobalBatchNorm1d(dim, affine=False, eps=1e-6), linear) if linear_probe else linear
        if linear_probe:
            self.encoder.requires_grad_(False)
        else:
            freeze_skipped_norm(encoder)

    def train(self, mode: bool = True) -> Classifier:
        """A probed encoder stays in eval mode (no dropout or drop path), only the head trains."""
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.linear_probe:
            with torch.no_grad():
                return self.encoder.pooled_features(images)
        return self.fc_norm(self.encoder.pooled_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """For timm's layer-wise lr decay: the encoder's layer rule; the pooling norm and head come last."""
        return encoder_group_matcher(self.encoder, coarse)


def freeze_skipped_norm(encoder: nn.Module) -> None:
    """Pooling skips the encoder's final norm where the pooled features get a norm of their own
    (``pool_with_norm``): mark it untrained, or DDP waits for gradients that never come."""
    if encoder.pool_with_norm:
        encoder.norm.requires_grad_(False)


def encoder_group_matcher(encoder: nn.Module, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
    """timm's ``group_matcher`` of a model that holds ``encoder`` as ``encoder.`` (a classifier, a timm-wrapped
    encoder): the layer of a parameter is the encoder's ``layer_ordinal`` (the stem first, then every block in
    running order); everything outside the encoder (pooling norm, head) comes last. ``coarse`` groups by the
    ordinal's first part only: per block for a ViT, per stage for ConvViT and Swin."""

    def ordinal(name: str) -> tuple[float, ...]:
        if not name.startswith(ENCODER_PREFIX):
            return (math.inf,)
        layer = encoder.layer_ordinal(name[len(ENCODER_PREFIX) :])
        return layer[:1] if coarse else layer

    return ordinal
