"""Frozen-teacher feature targets (MR-MAE Eq. 2's ``F_v``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def teacher_feature_target(features: torch.Tensor, normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """``(B, L, C)`` teacher features as a regression target: each token standardized over its channels
    (a LayerNorm without affine parameters, as feature-distillation methods whiten CLIP features) when
    ``normalize``, else unchanged. The paper does not say; ``normalize_teacher_features`` chooses."""
    return F.layer_norm(features, features.shape[-1:], eps=eps) if normalize else features
