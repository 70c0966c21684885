"""Semantic-segmentation metrics as MMSegmentation's ``IoUMetric`` reports them for ADE20K (the papers' mIoU).

One confusion matrix over the whole validation set (rows: ground truth, columns: prediction), summed over processes,
then per class k: IoU = TP / (TP + FP + FN) and Acc = TP / (pixels labelled k). A class with no pixel in truth or
prediction has an undefined IoU, a class absent from the truth an undefined Acc: both are NaN and left out of the
means (mmseg's ``nanmean``), and written as ``null`` in JSON. aAcc is the fraction of labelled pixels predicted right.
Pixels labelled 255 count nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mimkit.dense.segmenter import IGNORE_INDEX, check_class_count
from mimkit.engine.distributed import sum_across_processes


def check_labels(labels: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    """Raise ``ValueError`` if a value of ``labels`` is neither a class index in ``0..num_classes-1`` nor 255."""
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"{what} must be in 0..{num_classes - 1} or {IGNORE_INDEX}, found {labels[bad][0].item()}")


def percent_or_none(value: float) -> float | None:
    """A ratio in percent, ``None`` (JSON null) where it is undefined (NaN)."""
    return None if math.isnan(value) else 100.0 * value


def nan_mean(values: torch.Tensor) -> float:
    """Mean of the defined (non-NaN) values, NaN if there is none."""
    defined = values[~values.isnan()]
    return defined.mean().item() if len(defined) else math.nan


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (int64, on ``device``)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        check_class_count(num_classes)
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def add(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Count predicted class indices against labels of the same shape; label 255 pixels are skipped."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
        check_labels(label, self.num_classes)
        pred, label = pred.to(self.matrix.device), label.to(self.matrix.device)
        labelled = label != IGNORE_INDEX
        pred, label = pred[labelled].long(), label[labelled].long()
        check_labels(pred, self.num_classes, what="predictions")
        k = self.num_classes
        self.matrix += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k)

    def merged(self) -> ConfusionMatrix:
        """A copy holding the sum of every process's matrix (this one unchanged); every process must call it."""
        total = ConfusionMatrix(self.num_classes, self.matrix.device)
        total.matrix = sum_across_processes(self.matrix)
        return total

    def summary(self, class_names: Sequence[str]) -> dict:
        """``mIoU``, ``mAcc``, ``aAcc`` and per-class ``IoU`` / ``Acc`` (``{name: value}``), all in percent; undefined
        values are ``None``."""
        if len(class_names) != self.num_classes or len(set(class_names)) != self.num_classes:
            raise ValueError(f"need {self.num_classes} distinct class names, got {list(class_names)}")
        counts = self.matrix.double().cpu()
        true_positive = counts.diagonal()
        labelled = counts.sum(dim=1)
        union = labelled + counts.sum(dim=0) - true_positive
        iou = true_positive / union  # 0 / 0 -> NaN for a class absent from truth and prediction
        accuracy = true_positive / labelled
        total = labelled.sum().item()
        return {
            "mIoU": percent_or_none(nan_mean(iou)),
            "mAcc": percent_or_none(nan_mean(accuracy)),
            "aAcc": percent_or_none(true_positive.sum().item() / total if total else math.nan),
            "IoU": {name: percent_or_none(v) for name, v in zip(class_names, iou.tolist(), strict=True)},
            "Acc": {name: percent_or_none(v) for name, v in zip(class_names, accuracy.tolist(), strict=True)},
        }
