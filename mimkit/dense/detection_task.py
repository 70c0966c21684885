"""Object detection and instance segmentation as a dense task: Mask R-CNN on COCO-format data, scored by COCO's
box and mask AP (``mimkit detect``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimkit.dense.coco_data import CocoInstances, LargeScaleJitter, collate_detection
from mimkit.dense.coco_eval import coco_results, evaluate_coco, gather_across_processes
from mimkit.dense.dense_dataset import padding_fill
from mimkit.dense.detector import MaskRCNNDetector
from mimkit.dense.pictures import detection_picture
from mimkit.dense.task import DenseTask
from mimkit.engine.distributed import DistInfo
from mimkit.errors import DataError

PICTURE_SCORE_THRESHOLD = 0.3
"""Detections drawn in the evaluation picture: a short run's are rarely above the usual 0.5."""
PICTURE_AT_LEAST = 3
"""Below the threshold, an image still shows its best few detections, so a weak model's picture is not empty."""


def shown_detections(prediction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detections the picture draws: those scoring at least :data:`PICTURE_SCORE_THRESHOLD`, and never fewer
    than the :data:`PICTURE_AT_LEAST` best (torchvision returns them by descending score)."""
    count = max(int((prediction["scores"] >= PICTURE_SCORE_THRESHOLD).sum()), PICTURE_AT_LEAST)
    return {key: value[:count] for key, value in prediction.items()}


class DetectionTask(DenseTask):
    tag = "detect"

    def __init__(self, config: Any, dist: DistInfo) -> None:
        super().__init__(config, dist)
        data = config.data
        jitter = LargeScaleJitter(data.img_size, tuple(data.scale_range), data.hflip, padding_fill(data.mean))
        self._train = CocoInstances(
            data.train_images, data.train_annotations, data.in_chans, jitter, seed=config.train.seed
        )
        self.val = CocoInstances(data.val_images, data.val_annotations, data.in_chans)
        if self.val.category_ids != self._train.category_ids:
            raise DataError(
                f"{data.train_annotations} and {data.val_annotations} list different categories "
                f"({self._train.category_ids} vs {self.val.category_ids}); both splits need the same category list"
            )
        self.val_count = min(len(self.val), data.val_limit or len(self.val))

    @property
    def train_set(self) -> torch.utils.data.Dataset:
        return self._train

    def collate_train(self, items: list) -> dict:
        return collate_detection(items)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        model, data = self.config.model, self.config.data
        return MaskRCNNDetector(
            backbone,
            self._train.num_categories,
            data.img_size,
            data.mean,
            data.std,
            fpn_channels=model.fpn_channels,
            rpn_batch_size_per_image=model.rpn_batch_size_per_image,
            box_batch_size_per_image=model.box_batch_size_per_image,
            detections_per_image=model.detections_per_image,
        )

    def _to_device(self, batch: dict) -> tuple[list[torch.Tensor], list[dict]]:
        device = self.dist.device
        images = [image.to(device, non_blocking=True) for image in batch["images"]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
        return images, targets

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of Mask R-CNN's five losses (RPN objectness and box, RoI class, box and mask)."""
        losses = model(*self._to_device(batch))
        return sum(losses.values()), losses

    @torch.no_grad()
    def evaluate(self, model: nn.Module, picture: Path | None, picture_images: int) -> dict[str, Any]:
        """COCO box and mask AP (percent) over the first ``val_count`` validation images, each process predicting
        every ``world_size``-th batch; the main process scores the gathered results (the others return ``{}``)."""
        indices = list(range(self.val_count))
        batch_size = self.config.train.eval_batch_size
        shown: list[tuple[torch.Tensor, dict]] = []
        results: list[dict] = []
        for start in range(self.dist.rank * batch_size, len(indices), batch_size * self.dist.world_size):
            batch = collate_detection([self.val[i] for i in indices[start : start + batch_size]])
            images = [image.to(self.dist.device) for image in batch["images"]]
            predictions = [{k: v.float() if v.is_floating_point() else v for k, v in p.items()} for p in model(images)]
            results += coco_results(predictions, batch["image_ids"], self.val.category_ids)
            if picture is not None and len(shown) < picture_images:
                pairs = zip(images, predictions, strict=True)
                shown += [(image.cpu(), {k: v.cpu() for k, v in shown_detections(p).items()}) for image, p in pairs]
        results = gather_across_processes(results)
        if picture is not None and shown:
            images, predictions = zip(*shown[:picture_images], strict=True)
            detection_picture(images, predictions, self.val.class_names, picture, score_threshold=0.0)
        if not self.dist.is_main:
            return {}
        evaluation = evaluate_coco(self.val.coco, results, [self.val.image_ids[i] for i in indices])
        return evaluation.metrics

    def headline(self, metrics: dict[str, Any]) -> str:
        box, mask = metrics.get("bbox_AP"), metrics.get("segm_AP")
        return f"box AP {box:.2f}  mask AP {mask:.2f}" if box is not None and mask is not None else "no AP"

    def describe(self) -> list[str]:
        data = self.config.data
        return [
            f"data:       {len(self._train)} training images ({data.train_images}), {self.val_count} validation "
            f"images ({data.val_images}), {self._train.num_categories} classes, {data.img_size} px LSJ crops"
        ]

    def record(self) -> dict[str, Any]:
        return {"class_names": self.val.class_names, "category_ids": self.val.category_ids}
