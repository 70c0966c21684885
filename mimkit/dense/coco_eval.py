"""COCO box and mask AP of Mask R-CNN predictions with the official evaluator (pycocotools' ``COCOeval``), the
metrics of ConvMAE Table 2 and MixMAE Tables 4 and 13-16.

Results are evaluated as torchvision's detection reference does: box results carry the box, mask results the RLE
mask alone, so pycocotools takes a mask result's area (small/medium/large) from the mask rather than the box.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""``COCOeval.stats[0..5]``: AP at IoU .50:.95, at .50, at .75, and for small, medium and large objects."""


@dataclass(frozen=True)
class CocoEvaluation:
    """``metrics``: ``bbox_AP`` ... ``segm_APl`` in percent, ``None`` where COCO leaves one undefined (-1: no
    ground truth in that area range); ``log``: COCOeval's printed tables."""

    metrics: dict[str, float | None]
    log: str


def coco_results(
    predictions: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """COCO result dicts from torchvision Mask R-CNN outputs (``boxes`` xyxy in original image pixels, ``labels``
    1..K, ``scores``, ``masks`` (N, 1, H, W) probabilities), one output per entry of ``image_ids``. Contiguous label
    ``l`` maps to ``category_ids[l - 1]``; a mask pixel is in where its probability exceeds ``mask_threshold``.
    Each dict has ``image_id``, ``category_id``, ``score``, ``bbox`` (xywh) and ``segmentation`` (RLE, str counts)."""
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    results = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        labels = prediction["labels"].tolist()
        if any(not 1 <= label <= len(category_ids) for label in labels):
            raise ValueError(f"labels must be in 1..{len(category_ids)}, got {labels}")
        boxes = box_convert(prediction["boxes"].detach().float().cpu(), "xyxy", "xywh")
        masks = (prediction["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(labels) else []
        for box, label, score, rle in zip(boxes.tolist(), labels, prediction["scores"].tolist(), rles, strict=True):
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label - 1]),
                    "score": float(score),
                    "bbox": box,
                    "segmentation": rle,
                }
            )
    return results


def gather_across_processes(items: list) -> list:
    """Every process's ``items`` concatenated in rank order, on every process (``items`` alone for one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(items)
    gathered: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def empty_results(coco_gt: COCO) -> COCO:
    """A result set without detections over ``coco_gt``'s images (``COCO.loadRes`` refuses an empty list), so that
    COCOeval scores 0 where there is ground truth and -1 where there is none, as for any other result set."""
    results = COCO()
    results.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    results.createIndex()
    return results


def evaluate_one(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> list[float]:
    """``COCOeval.stats[0..5]`` of one IoU type over ``image_ids`` (its printout goes to stdout: capture it)."""
    fields = ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation")
    loaded = coco_gt.loadRes([{k: r[k] for k in fields} for r in results]) if results else empty_results(coco_gt)
    evaluator = COCOeval(coco_gt, loaded, iou_type)
    evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[: len(STAT_NAMES)].tolist()


def evaluate_coco(coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None) -> CocoEvaluation:
    """Box and mask AP of ``results`` (:func:`coco_results`, gathered from every process) against ``coco_gt``, over
    ``image_ids`` (default: every ground-truth image). COCOeval's tables are captured into the returned ``log``."""
    image_ids = list(coco_gt.getImgIds() if image_ids is None else image_ids)
    unknown = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"results for image ids {unknown[:5]} that the ground truth does not have")
    metrics: dict[str, float | None] = {}
    log = io.StringIO()
    for iou_type in IOU_TYPES:
        with contextlib.redirect_stdout(log):
            print(f"COCO {iou_type} evaluation over {len(image_ids)} images, {len(results)} results")
            stats = evaluate_one(coco_gt, results, iou_type, image_ids)
        for name, value in zip(STAT_NAMES, stats, strict=True):
            metrics[f"{iou_type}_{name}"] = None if value < 0 else 100.0 * value
    return CocoEvaluation(metrics, log.getvalue())
