"""Configurations of ``mimkit detect`` and ``mimkit segment`` (no torch is imported).

The defaults are a small CPU job: a ``convmae_tiny`` encoder at 256 px, a narrow FPN / UperNet, a few hundred
steps, so ``mimkit detect data.train_images=... data.train_annotations=... data.val_images=...
data.val_annotations=...`` runs on any COCO-format folder and ``mimkit segment data.path=... data.num_classes=...``
on any ADE20K-style folder. The paper recipes (``mimkit configs``, ``detect/`` and ``segment/``) set their own
values; ``docs/dense.md`` explains each field and the choices the papers leave open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_schema import Settings, apply_overrides, from_dict, load_yaml, merged_sections
from mimkit.config_types import Count, Fraction, NonNegative, NonNegativeInt, Positive, ZeroToOne
from mimkit.engine.config_parts import (
    AccumulationFields,
    ImageInputFields,
    LoopFields,
    OptimizerFields,
    check_min_max,
)
from mimkit.eval.checkpoint_record import checkpoint_defaults
from mimkit.eval.config import EncoderSection
from mimkit.model_configs.registry import model_config

DEFAULT_DENSE_MODEL = "convmae_tiny"
"""The encoder of a run that names none: MCMAE's hybrid ConvViT, multi-scale by construction (Sec. 2.3)."""


@dataclass
class DenseEncoderSection(EncoderSection):
    """The pretraining model whose encoder becomes the backbone (``name``, ``args``, ``checkpoint`` as for
    fine-tuning) and how the backbone adapts it to large images."""

    name: str = DEFAULT_DENSE_MODEL
    window: Count | None = None
    """Side of the local attention windows of the dense backbone (null: the family's paper default, see
    ``docs/dense.md``)."""
    global_blocks: list[NonNegativeInt] | None = None
    """0-based blocks that keep global attention (Swin: that get windows twice as large, MixMAE App. A.1; null:
    the family's paper default)."""
    feature_blocks: list[NonNegativeInt] | None = None
    """Plain ViT only: the block (one) or blocks (four) whose outputs become the 1/4..1/32 maps (null: the last
    block for detection, ViTDet; four evenly spaced blocks for segmentation, BEiT/MAE)."""

    def encoder_args(self, img_size: int, in_chans: int, drop_path: float) -> dict[str, Any]:
        """``args`` with the input format and drop path the dense run decides (explicit ``args`` win)."""
        return {"img_size": img_size, "in_chans": in_chans, "drop_path_rate": drop_path, **self.args}


@dataclass
class DetectModelSection(DenseEncoderSection):
    """Mask R-CNN (torchvision) on an FPN over the backbone's four maps."""

    fpn_channels: Count = 64
    """Width of the FPN and the heads (the papers' recipes: 256)."""
    rpn_batch_size_per_image: Count = 256
    box_batch_size_per_image: Count = 128
    """RoIs sampled per image for the box and mask heads (the recipes: 512; fewer keeps a CPU step short)."""
    detections_per_image: Count = 100


@dataclass
class SegmentModelSection(DenseEncoderSection):
    """UperNet with an auxiliary FCN head on the backbone's four maps."""

    channels: Count = 64
    """Width of the UperNet decode head (the papers' recipes: 512)."""
    aux_channels: Count = 32
    """Width of the auxiliary FCN head on the 1/16 map (recipes: 256)."""
    aux_weight: NonNegative = 0.4
    """Weight of the auxiliary head's loss (MMSegmentation's UperNet recipes: 0.4)."""
    dropout: ZeroToOne = 0.1
    """Dropout before each head's classifier (the recipes: 0.1)."""


@dataclass
class CocoDataSection(ImageInputFields):
    """COCO-format data: an image folder and an instances JSON per split."""

    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    img_size: Count = 256
    """Side of the square training crops after large-scale jitter; validation images are resized so their
    longer side is this (the papers: 1024)."""
    scale_range: tuple[Positive, Positive] = (0.1, 2.0)
    """Large-scale jitter: resize by a random factor in this range of ``img_size``, then crop or pad."""
    hflip: bool = True
    val_limit: Count | None = None
    """Evaluate on the first N validation images only (quick checks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_max("scale_range", self.scale_range)
        missing = [name for name in _COCO_FIELDS if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"set {', '.join(f'data.{name}=...' for name in missing)} (a COCO-format image folder and instances "
                "JSON per split; `mimkit dense-demo OUTPUT` writes a small one)"
            )


_COCO_FIELDS = ("train_images", "train_annotations", "val_images", "val_annotations")


@dataclass
class AdeDataSection(ImageInputFields):
    """ADE20K-style data: ``images/{training,validation}`` and ``annotations/{training,validation}`` (label
    PNGs of the same stem) under ``path``."""

    path: str | None = None
    num_classes: Count | None = None
    """Classes of the label maps (after ``reduce_zero_label``); ADE20K: 150."""
    reduce_zero_label: bool = False
    """Label 0 means "unlabelled" and is ignored, the others move down by one (ADE20K's convention: true)."""
    img_size: Count = 256
    """Side of the square training crops (the papers: 512); also the sliding window at evaluation."""
    ratio_range: tuple[Positive, Positive] = (0.5, 2.0)
    """Random resize of the base scale (4 x img_size by img_size, keeping the aspect ratio) by this ratio."""
    cat_max_ratio: Fraction = 0.75
    """A random crop is redrawn (up to 10 times) while one class covers more than this share of it."""
    hflip: bool = True
    photometric: bool = True
    """Brightness, contrast, saturation and hue jitter (MMSegmentation's PhotoMetricDistortion)."""
    slide_stride: Count | None = None
    """Stride of the sliding-window inference (null: 2/3 of img_size, as the 512/341 recipe)."""
    val_limit: Count | None = None
    """Evaluate on the first N validation images only (quick checks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_max("ratio_range", self.ratio_range)
        if self.path is None or self.num_classes is None:
            raise ValueError(
                "set data.path=... and data.num_classes=... (an ADE20K-style folder; `mimkit dense-demo OUTPUT` "
                "writes a small one with 11 classes)"
            )
        if self.slide_stride is not None and self.slide_stride > self.img_size:
            raise ValueError(f"data.slide_stride {self.slide_stride} leaves gaps between windows of {self.img_size}")


@dataclass
class DenseOptimSection(OptimizerFields):
    """AdamW with layer-wise lr decay, a linear warm-up and a cosine, poly or step decay, per iteration."""

    lr: Positive = 1e-4
    """Peak learning rate of the whole batch, as the dense recipes state it (not rescaled with the batch)."""
    betas: tuple[ZeroToOne, ZeroToOne] = (0.9, 0.999)
    weight_decay: NonNegative = 0.05
    layer_decay: Fraction = 0.75
    """Layer-wise lr decay through the encoder's layer rule (1 = none)."""
    schedule: Literal["cosine", "poly", "step"] = "cosine"
    """``poly``: (1 - t)^poly_power (the segmentation recipes); ``step``: x0.1 at each ``step_at`` fraction."""
    warmup_steps: NonNegativeInt = 50
    poly_power: Positive = 1.0
    step_at: list[Fraction] = field(default_factory=lambda: [0.889, 0.963])
    """Fractions of the schedule where a ``step`` schedule divides the lr by 10 (the LSJ 100-epoch recipe's)."""


@dataclass
class DenseTrainSection(LoopFields, AccumulationFields):
    epochs: Count = 12
    iterations: Count | None = None
    """Optimizer steps of the whole schedule; null: epochs x steps per epoch (the segmentation recipes count
    iterations, the detection ones epochs)."""
    batch_size: Count = 4
    drop_path: ZeroToOne = 0.1
    log_every: Count = 10
    eval_every: NonNegativeInt = 0
    """Evaluate every this many steps, and always at the end (0: at the end only)."""
    eval_batch_size: Count = 4
    visualize_images: NonNegativeInt = 4
    """Validation images in the picture written at every evaluation (0: none)."""
    keep_checkpoints: NonNegativeInt = 0


@dataclass
class DetectConfig(Settings):
    model: DetectModelSection = field(default_factory=DetectModelSection)
    data: CocoDataSection = field(default_factory=CocoDataSection)
    optim: DenseOptimSection = field(default_factory=DenseOptimSection)
    train: DenseTrainSection = field(default_factory=DenseTrainSection)
    output: str = "runs/detect"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_encoder(self.model, self.data)


@dataclass
class SegmentConfig(Settings):
    model: SegmentModelSection = field(default_factory=SegmentModelSection)
    data: AdeDataSection = field(default_factory=AdeDataSection)
    optim: DenseOptimSection = field(default_factory=DenseOptimSection)
    train: DenseTrainSection = field(default_factory=DenseTrainSection)
    output: str = "runs/segment"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_encoder(self.model, self.data)


def _check_encoder(model: DenseEncoderSection, data: ImageInputFields) -> None:
    """A video model cannot be a dense backbone; the crops must tile into whole 1/32 cells (the coarsest map)."""
    if data.img_size % 32:
        raise ValueError(f"data.img_size {data.img_size} must be a multiple of 32 (the backbone's coarsest stride)")
    built = model_config(model.name, prefix="model.args", **model.encoder_args(data.img_size, data.in_chans, 0.0))
    if hasattr(built, "num_frames"):
        raise ValueError(f"model '{model.name}' is a video model; dense prediction needs an image encoder")


SEGMENT_DEFAULTS: dict[str, Any] = {"optim": {"schedule": "poly"}, "train": {"iterations": 300}}
"""``mimkit segment`` without a config: the poly schedule of the UperNet recipes, counted in iterations."""


def _load(cls: type, base: dict, path: str | None, overrides: list[str] | None) -> Any:
    """``base``, then a mimkit checkpoint's model and input format (not its image size), then the YAML file and
    ``key=value`` overrides."""
    explicit = apply_overrides(load_yaml(path) if path else {}, overrides or [])
    model = explicit.get("model") if isinstance(explicit.get("model"), dict) else {}
    checkpoint = model.get("checkpoint")
    defaults = checkpoint_defaults(checkpoint, explicit, with_img_size=False) if isinstance(checkpoint, str) else {}
    return from_dict(cls, merged_sections(merged_sections(base, defaults), explicit))


def load_detect_config(path: str | None = None, overrides: list[str] | None = None) -> DetectConfig:
    return _load(DetectConfig, {}, path, overrides)


def load_segment_config(path: str | None = None, overrides: list[str] | None = None) -> SegmentConfig:
    return _load(SegmentConfig, SEGMENT_DEFAULTS, path, overrides)

