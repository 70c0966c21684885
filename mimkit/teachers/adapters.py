"""Teacher adapters: token networks (timm ViTs, mimkit encoders) and CNN feature maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mimkit.backbones.hooks import recorded_inputs
from mimkit.teachers.attention import cls_attention
from mimkit.teachers.base import FrozenTeacher, tokens_to_map


class TokenTeacher(FrozenTeacher):
    """A transformer teacher: ``run(images)`` gives ``(B, P + h*w, C)`` normed tokens, ``P`` prefix tokens first.

    The features are the patch tokens of the final (normed) output; with ``last_block`` set and a [CLS] token
    (``P >= 1``), the [CLS] attention of that block comes along (:func:`cls_attention`).
    """

    def __init__(
        self,
        network: nn.Module,
        run: Callable[[torch.Tensor], torch.Tensor],
        feature_dim: int,
        patch_size: int,
        num_prefix_tokens: int,
        last_block: nn.Module | None,
        mean: Sequence[float],
        std: Sequence[float],
        img_size: int,
        bf16: bool = False,
    ) -> None:
        super().__init__(mean, std, img_size, bf16)
        self.network = network
        self.run = run
        self.feature_dim = feature_dim
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self.last_block = last_block
        self.has_cls_attention = last_block is not None and num_prefix_tokens >= 1
        if img_size % patch_size:
            raise ValueError(f"teacher img_size={img_size} must be a multiple of its patch size {patch_size}")
        self.freeze()

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if not self.has_cls_attention:
            return tokens_to_map(self.run(images)[:, self.num_prefix_tokens :], grid), None
        with recorded_inputs(self.last_block) as inputs:
            tokens = self.run(images)
        attention = cls_attention(self.last_block, inputs[-1], self.num_prefix_tokens)
        return tokens_to_map(tokens[:, self.num_prefix_tokens :], grid), attention.reshape(-1, *grid)


class FeatureMapTeacher(FrozenTeacher):
    """A CNN teacher: ``extractor(images)`` gives a ``(B, C, h, w)`` map; no [CLS] attention."""

    def __init__(
        self,
        extractor: nn.Module,
        feature_dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        img_size: int,
        bf16: bool = False,
    ) -> None:
        super().__init__(mean, std, img_size, bf16)
        self.extractor = extractor
        self.feature_dim = feature_dim
        self.freeze()

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.extractor(images), None
