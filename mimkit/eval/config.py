"""Configurations of ``mimkit finetune``, ``mimkit linprobe`` and ``mimkit knn``: YAML sections validated into
dataclasses, with errors that name the field. Defaults are a small Fashion-MNIST job; the paper recipes in
``configs/finetune/`` set their own values; ``docs/configs.md`` explains each field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_schema import ConfigError, apply_overrides, from_dict, load_yaml
from mimkit.engine.config import check_source_fits_model
from mimkit.models import model_config

FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]


@dataclass
class EncoderSection:
    name: str = "mae_vit_tiny_patch16"
    """The pretraining model whose encoder is used (``mimkit.list_models()``)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Overrides of that model's fields (e.g. ``patch_size``, ``drop_path_rate``); ``img_size`` and ``in_chans``
    come from the data section."""
    checkpoint: str | None = None
    """A mimkit pretraining checkpoint, an authors' released checkpoint, or null for a random init."""

    def __post_init__(self) -> None:
        model_config(self.name, **self.args)


@dataclass
class LabelledDataSection:
    source: Literal["fashion_mnist", "folder", "clips"] = "fashion_mnist"
    """``fashion_mnist``: its train and test idx files; ``folder``: images in one sub-folder per class; ``clips``:
    clips (frame folders or video files) in one sub-folder per class, for video encoders."""
    train_path: str | None = None
    """``folder``: the training images; ``fashion_mnist``: the idx folder (default the Debian location)."""
    val_path: str | None = None
    """``folder``: the validation images (same class sub-folders); unused for ``fashion_mnist`` (test split)."""
    img_size: int = 28
    in_chans: Literal[1, 3] = 1
    mean: list[float] = field(default_factory=lambda: list(FASHION_MNIST_MEAN))
    std: list[float] = field(default_factory=lambda: list(FASHION_MNIST_STD))
    train_limit: int | None = None
    """Use only the first N training images (quick checks, low-label regimes)."""
    val_limit: int | None = None
    label_fraction: float | None = None
    """Keep this share of the training labels, class-balanced (round(share x class size) images per class, at
    least one), drawn with ``label_seed``; null keeps every image (low-label fine-tuning)."""
    label_seed: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    num_frames: int = 16
    """Frames per clip (``clips`` only)."""
    frame_stride: int = 4
    """Frames between two sampled frames of a clip (``clips`` only)."""
    num_workers: int = 2

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each (in_chans={self.in_chans})")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")


@dataclass
class AugmentSection:
    """MAE's fine-tuning augmentation (appendix Table 9); set a field to 0/null to switch that piece off."""

    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    """timm RandAugment spec: magnitude 9, std 0.5 (RandAug(9, 0.5))."""
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    random_erase: float = 0.25
    hflip: bool = True
    """Random horizontal flips (ConvMAE Sec. 3.4 turns them off for SSV2)."""


@dataclass
class TransferOptimSection:
    name: Literal["adamw", "lars", "sgd"] = "adamw"
    base_lr: float = 5e-4
    """Learning rate per 256 images (lr = base_lr x effective batch / 256)."""
    layer_decay: float = 0.75
    """Layer-wise lr decay (1 = none); a layer n below the head learns at layer_decay**n times the rate."""
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    """For ``lars`` and ``sgd``."""
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclass
class TransferTrainSection:
    epochs: int = 10
    batch_size: int = 64
    """Images per process per step (even, as Mixup/CutMix pair images)."""
    drop_path: float = 0.1
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule still spans ``epochs``)."""
    log_every: int = 20
    eval_batch_size: int = 256
    eval_every: int = 1
    """Validate (and write ``best``) every this many epochs and after the last; 0: after the last only."""
    checkpoint_every: int = 0
    """Also write ``last`` every this many steps, for a mid-epoch resume (0: only at the end of each epoch)."""
    keep_checkpoints: int = 0
    """Besides ``last`` and ``best``, keep the N most recent checkpoints (``checkpoints/step_NNNNNNNN.safetensors``)."""

    def __post_init__(self) -> None:
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"batch_size must be even and at least 2, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")


@dataclass
class TransferConfig:
    """``protocol``: ``finetune`` (the whole encoder trains) or ``linprobe`` (frozen encoder, BN + linear)."""

    protocol: Literal["finetune", "linprobe"] = "finetune"
    model: EncoderSection = field(default_factory=EncoderSection)
    data: LabelledDataSection = field(default_factory=LabelledDataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: TransferOptimSection = field(default_factory=TransferOptimSection)
    train: TransferTrainSection = field(default_factory=TransferTrainSection)
    output: str = "runs/finetune"

    def __post_init__(self) -> None:
        check_source_fits_model(self.data.source, self.model.name)


LINPROBE_DEFAULTS: dict[str, Any] = {
    "protocol": "linprobe",
    "augment": {"rand_augment": None, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "random_erase": 0.0},
    "optim": {"name": "lars", "base_lr": 0.1, "layer_decay": 1.0, "weight_decay": 0.0, "warmup_epochs": 1.0},
    "train": {"drop_path": 0.0},
    "output": "runs/linprobe",
}
"""MAE's linear probe (appendix Table 10): no augmentation but crops and flips, LARS, no weight decay."""


@dataclass
class KnnConfig:
    """Weighted kNN on frozen, L2-normalized pooled features (k=20, cosine, temperature 0.07)."""

    model: EncoderSection = field(default_factory=EncoderSection)
    data: LabelledDataSection = field(default_factory=LabelledDataSection)
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output: str | None = None
    """A JSON file for the result (null: print only)."""

    def __post_init__(self) -> None:
        check_source_fits_model(self.data.source, self.model.name)
        if self.k < 1 or self.temperature <= 0:
            raise ValueError(f"k must be at least 1 and temperature positive, got k={self.k}, T={self.temperature}")


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def load_transfer_config(protocol: str, path: str | None = None, overrides: list[str] | None = None) -> TransferConfig:
    """``protocol`` defaults (linprobe: MAE's probe), then the YAML file, then ``key=value`` overrides."""
    base = LINPROBE_DEFAULTS if protocol == "linprobe" else {"protocol": protocol}
    stored = load_yaml(path) if path else {}
    if stored.get("protocol", protocol) != protocol:
        raise ConfigError(f"{path} is a '{stored['protocol']}' config; run it with `mimkit {stored['protocol']}`")
    data = _merge(base, stored)
    return from_dict(TransferConfig, apply_overrides(data, overrides or []))


def load_knn_config(path: str | None = None, overrides: list[str] | None = None) -> KnnConfig:
    data = load_yaml(path) if path else {}
    return from_dict(KnnConfig, apply_overrides(data, overrides or []))
