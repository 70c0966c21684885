"""Semantic segmentation as a dense task: UperNet on ADE20K-style folders, scored by mIoU (``mimkit segment``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as F_v2

from mimkit.dense.ade_data import (
    AdeSegmentation,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_segmentation_train,
)
from mimkit.dense.dense_dataset import padding_fill
from mimkit.dense.pictures import segmentation_picture
from mimkit.dense.seg_metrics import ConfusionMatrix
from mimkit.dense.segmenter import Segmenter
from mimkit.dense.task import DenseTask
from mimkit.engine.distributed import DistInfo

SLIDE_STRIDE_SHARE = 2 / 3
"""Sliding-window stride as a share of the crop when the config sets none (512 / 341 in the ADE20K recipes)."""


class SegmentationTask(DenseTask):
    tag = "segment"

    def __init__(self, config: Any, dist: DistInfo) -> None:
        super().__init__(config, dist)
        data = config.data
        train_transform = SegmentationTrainTransform(
            crop_size=data.img_size,
            ratio_range=tuple(data.ratio_range),
            cat_max_ratio=data.cat_max_ratio,
            hflip=data.hflip,
            photometric=data.photometric,
            fill=padding_fill(data.mean),
        )
        common = {
            "num_classes": data.num_classes,
            "reduce_zero_label": data.reduce_zero_label,
            "in_chans": data.in_chans,
        }
        train_seed = config.train.seed
        self._train = AdeSegmentation(data.path, "training", transform=train_transform, seed=train_seed, **common)
        val_transform = SegmentationEvalTransform(data.img_size)
        self.val = AdeSegmentation(data.path, "validation", transform=val_transform, **common)
        self.val_count = min(len(self.val), data.val_limit or len(self.val))
        self.class_names = [f"class_{k}" for k in range(data.num_classes)]
        self.stride = data.slide_stride or max(1, round(data.img_size * SLIDE_STRIDE_SHARE))

    @property
    def train_set(self) -> torch.utils.data.Dataset:
        return self._train

    def collate_train(self, items: list) -> dict:
        return collate_segmentation_train(items)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        model = self.config.model
        classes = self.config.data.num_classes
        return Segmenter(backbone, classes, model.channels, model.aux_channels, model.aux_weight, model.dropout)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        data = self.config.data
        return F_v2.normalize(images.to(self.dist.device, non_blocking=True), list(data.mean), list(data.std))

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"].to(self.dist.device, non_blocking=True)
        return model(self._input(batch["images"]), labels)

    @torch.no_grad()
    def predict(self, model: Segmenter, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The ``(H, W)`` label map of one resized ``image`` at its original ``size``: sliding-window logits
        resized bilinearly (as MMSegmentation), then the arg-max."""
        logits = model.slide_inference(self._input(image[None]), self.config.data.img_size, self.stride)
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)[0].argmax(0)

    def evaluate(self, model: nn.Module, picture: Path | None, picture_images: int) -> dict[str, Any]:
        """mIoU, mAcc, aAcc (percent) and per-class IoU/Acc over the validation images (each process scores every
        ``world_size``-th image; the confusion matrices are summed)."""
        confusion = ConfusionMatrix(self.config.data.num_classes, self.dist.device)
        shown: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for index in range(self.dist.rank, self.val_count, self.dist.world_size):
            item = self.val[index]
            label = item["label"].to(self.dist.device)
            pred = self.predict(model, item["image"], tuple(label.shape))
            confusion.add(pred, label)
            if picture is not None and len(shown) < picture_images:
                original = F.interpolate(item["image"][None], size=tuple(label.shape), mode="bilinear")[0]
                shown.append((original.clamp(0, 1), pred.cpu(), label.cpu()))
        results = confusion.merged().summary(self.class_names)
        if picture is not None and shown:
            images, predicted, truth = zip(*shown, strict=True)
            segmentation_picture(images, predicted, truth, picture, self.config.data.num_classes)
        return results

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"mIoU {metrics['mIoU']:.2f}%  mAcc {metrics['mAcc']:.2f}%  aAcc {metrics['aAcc']:.2f}%"

    def describe(self) -> list[str]:
        data = self.config.data
        return [
            f"data:       {len(self._train)} training and {self.val_count} validation images under {data.path}, "
            f"{data.num_classes} classes, {data.img_size} px crops, sliding windows every {self.stride} px"
        ]

    def record(self) -> dict[str, Any]:
        return {"class_names": self.class_names}
