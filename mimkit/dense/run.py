"""The Python entry points of dense prediction: ``detect(config)`` and ``segment(config)`` run a config (see
:mod:`mimkit.dense.config`) as ``mimkit detect`` and ``mimkit segment`` do."""

from __future__ import annotations

from pathlib import Path

from mimkit.dense.config import DetectConfig, SegmentConfig
from mimkit.dense.detection_task import DetectionTask
from mimkit.dense.segmentation_task import SegmentationTask
from mimkit.dense.trainer import DenseSummary, DenseTrainer


def dense_trainer(
    config: DetectConfig | SegmentConfig,
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> DenseTrainer:
    """The trainer of ``config``: Mask R-CNN for a :class:`DetectConfig`, UperNet for a :class:`SegmentConfig`."""
    task = DetectionTask if isinstance(config, DetectConfig) else SegmentationTask
    return DenseTrainer(task, config, resume, overwrite, allow_changes)


def detect(config: DetectConfig, resume: str | Path | None = None, overwrite: bool = False) -> DenseSummary:
    """Train and evaluate Mask R-CNN as ``config`` says; ``OUTPUT/eval.json`` holds box and mask AP."""
    return dense_trainer(config, resume, overwrite).run()


def segment(config: SegmentConfig, resume: str | Path | None = None, overwrite: bool = False) -> DenseSummary:
    """Train and evaluate UperNet as ``config`` says; ``OUTPUT/eval.json`` holds mIoU, mAcc and aAcc."""
    return dense_trainer(config, resume, overwrite).run()
