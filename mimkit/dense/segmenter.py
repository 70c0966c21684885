"""A semantic segmenter: a dense backbone, the UperNet decode head and the auxiliary FCN head (the ADE20K recipes
of BEiT, MAE, ConvMAE Sec. 3.3 and MixMAE Sec. 4, as MMSegmentation runs them).

Conventions follow MMSegmentation: logits are resized to the label size bilinearly (``align_corners=False``), the
loss is pixel cross-entropy ignoring label 255 plus 0.4 x the auxiliary head's, and evaluation runs the 'slide'
mode (overlapping crops, averaged logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.dense.upernet import PAPER_DROPOUT, AuxiliaryFCNHead, UperNetHead, resize

IGNORE_INDEX = 255
"""Label of unlabelled pixels (ADE20K's 0 after ``reduce_zero_label``), excluded from the loss and the metrics."""
PAPER_AUX_WEIGHT = 0.4
BACKBONE_PREFIX = "backbone."
WINDOWS_PER_FORWARD = 8
"""Sliding windows run through the model together (one batch) in :meth:`Segmenter.slide_inference`."""


def check_class_count(num_classes: int) -> None:
    """Raise ``ValueError`` unless there are 2 to 255 classes: indices must stay below the ignore label."""
    if not 2 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"segmentation needs 2 to {IGNORE_INDEX} classes (255 is the ignore label), got {num_classes}")


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` resized to the labels' size, summed over labelled pixels and divided by all
    pixels, ignored ones included (mmseg's default, ``avg_non_ignore=False``): an image's weight in the batch then
    does not depend on how much of it is labelled, a batch split across processes averages to the same loss, and a
    fully unlabelled batch gives 0 instead of NaN."""
    logits = resize(logits, labels.shape[-2:])
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return per_pixel.mean()


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of ``crop x crop`` windows every ``stride`` pixels covering a ``height x width`` image, the
    last row and column shifted back to end at the border (mmseg's 'slide' grid). An image smaller than the crop
    gets the one window at (0, 0) (padded by the caller)."""

    def starts(size: int) -> list[int]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]

    return [(top, left) for top in starts(height) for left in starts(width)]


class Segmenter(nn.Module):
    """``backbone`` (``forward(images)`` -> 4 maps at strides 4, 8, 16, 32; ``out_channels``; ``layer_ordinal``)
    with the UperNet decode head and the auxiliary FCN head on its maps."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        channels: int,
        aux_channels: int,
        aux_weight: float = PAPER_AUX_WEIGHT,
        dropout: float = PAPER_DROPOUT,
    ) -> None:
        super().__init__()
        check_class_count(num_classes)
        self.backbone = backbone
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        in_channels = tuple(backbone.out_channels)
        self.decode_head = UperNetHead(in_channels, num_classes, channels, dropout=dropout)
        self.aux_head = AuxiliaryFCNHead(in_channels[2], num_classes, aux_channels, dropout=dropout)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Decode-head logits ``(B, K, H, W)`` at the input size; with ``labels``, :meth:`loss` (so a training step
        runs through ``forward``, as DistributedDataParallel needs)."""
        if labels is not None:
            return self.loss(images, labels)
        return resize(self.decode_head(self.backbone(images)), images.shape[-2:])

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Decode cross-entropy + ``aux_weight`` x auxiliary cross-entropy on ``(B, H, W)`` long labels (255 ignored).
        Returns the total and its parts ``{"decode": ..., "aux": ...}`` (unweighted)."""
        maps = self.backbone(images)
        parts = {
            "decode": pixel_cross_entropy(self.decode_head(maps), labels),
            "aux": pixel_cross_entropy(self.aux_head(maps), labels),
        }
        return parts["decode"] + self.aux_weight * parts["aux"], parts

    @torch.no_grad()
    def slide_inference(self, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` of ``image`` ``(B, C, H, W)`` from ``crop x crop`` windows every ``stride`` pixels
        (mmseg's 'slide' mode), averaged where windows overlap. An image smaller than the crop is zero-padded at the
        bottom and right, so every window the model sees is ``crop x crop``; the padding's logits are dropped.
        Call it in eval mode."""
        if not 0 < stride <= crop:
            raise ValueError(f"sliding-window stride must be in 1..crop ({crop}), got {stride}")
        height, width = image.shape[-2:]
        padded = F.pad(image, (0, max(crop - width, 0), 0, max(crop - height, 0)))
        corners = sliding_windows(*padded.shape[-2:], crop, stride)
        total = image.new_zeros(len(image), self.num_classes, *padded.shape[-2:])
        count = image.new_zeros(1, 1, *padded.shape[-2:])
        for start in range(0, len(corners), WINDOWS_PER_FORWARD):
            chunk = corners[start : start + WINDOWS_PER_FORWARD]
            windows = torch.cat([padded[..., t : t + crop, left : left + crop] for t, left in chunk])
            for (top, left), logits in zip(chunk, self(windows).split(len(image)), strict=True):
                total[..., top : top + crop, left : left + crop] += logits.to(total.dtype)
                count[..., top : top + crop, left : left + crop] += 1
        return (total / count)[..., :height, :width]

    def layer_ordinal(self, name: str) -> tuple[float, ...]:
        """Layer of a parameter for layer-wise lr decay: the backbone's own rule, both heads after every layer."""
        if name.startswith(BACKBONE_PREFIX):
            return self.backbone.layer_ordinal(name[len(BACKBONE_PREFIX) :])
        return (math.inf,)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """For timm's layer-wise lr decay (:func:`mimkit.engine.optim.layer_decay_param_groups`)."""
        return self.layer_ordinal
