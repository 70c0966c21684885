"""Configurations of ``mimkit finetune``, ``mimkit linprobe`` and ``mimkit knn``: YAML sections validated into
dataclasses, with errors that name the field (no torch is imported). Defaults are a small Fashion-MNIST job; the
paper recipes under ``finetune/`` (``mimkit configs``) set their own values; ``docs/configs.md`` explains each
field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_schema import ConfigError, Settings, apply_overrides, from_dict, load_yaml, merged_sections
from mimkit.config_types import Count, Finite, Fraction, NonNegative, NonNegativeInt, Positive, Probability, ZeroToOne
from mimkit.engine.config import ModelSection, check_source_fits_model
from mimkit.engine.config_parts import (
    ImageColumnFields,
    ImageDataFields,
    LoopFields,
    OptimFields,
    check_python_source,
    resolve_warmup,
)
from mimkit.eval.checkpoint_record import checkpoint_defaults

FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]
DEFAULT_ENCODER_ARGS: dict[str, Any] = {"patch_size": 7}
"""``model.args`` of a run that names no model and starts from no mimkit checkpoint: the default tiny ViT's 7-px
patches tile Fashion-MNIST's 28 px in a 4 x 4 grid (its own 16-px patches do not)."""


@dataclass
class EncoderSection(ModelSection):
    """The pretraining model whose encoder is used (``name``, from ``mimkit.list_models()``) and overrides of its
    fields (``args``, e.g. ``patch_size``, ``drop_path_rate``); ``img_size`` and ``in_chans`` come from the data
    section."""

    checkpoint: str | None = None
    """A mimkit checkpoint (pretraining or transfer: its model and input format become the defaults, see
    :func:`mimkit.eval.checkpoint_record.checkpoint_defaults`), an authors' released checkpoint, or null for a random
    init."""


@dataclass
class LabelledDataSection(ImageColumnFields, ImageDataFields):
    source: Literal["fashion_mnist", "folder", "filelist", "hf_datasets", "clips", "python"] = "fashion_mnist"
    """``fashion_mnist``: its train and test idx files; ``folder``: images in one sub-folder per class; ``filelist``:
    CSV files with ``path`` and ``label`` columns or text files of ``path<TAB>label`` lines; ``hf_datasets``: a local
    Hugging Face dataset (``save_to_disk`` folder or ``imagefolder`` directory) with an image and a label column;
    ``clips``: clips (frame folders or video files) in one sub-folder per class, for video encoders; ``python``:
    datasets of ``(image, label)`` pairs passed to :func:`mimkit.finetune` and the like (set by them)."""
    train_path: str | None = None
    """``folder``: the training images; ``filelist``: the training list; ``hf_datasets``: the dataset folder;
    ``fashion_mnist``: the idx folder (default the Debian location)."""
    val_path: str | None = None
    """``folder``: the validation images (same class sub-folders); ``filelist``: the validation list;
    ``hf_datasets``: the validation dataset folder (default ``train_path``); unused for ``fashion_mnist`` (test
    split)."""
    label_column: str = "label"
    """``hf_datasets``: the column of the labels (class indices, ``ClassLabel`` or class names)."""
    train_split: str = "train"
    """``hf_datasets``: the split of ``train_path`` to train on."""
    val_split: str = "validation"
    """``hf_datasets``: the split of ``val_path`` to validate on (an ``imagefolder``'s ``val/`` or ``validation/``
    folder is its ``validation`` split)."""
    python_length: Count | None = None
    """``python``: the number of training items, recorded so a resume with another dataset is refused."""
    python_val_length: Count | None = None
    """``python``: the number of validation items, recorded likewise."""
    img_size: Count = 28
    in_chans: Literal[1, 3] = 1
    mean: list[Finite] = field(default_factory=lambda: list(FASHION_MNIST_MEAN))
    std: list[Positive] = field(default_factory=lambda: list(FASHION_MNIST_STD))
    train_limit: Count | None = None
    """Use only N training images, class-balanced (each class N // classes or one more, a small class all it has,
    the others making up the rest), drawn with ``label_seed``; below the number of classes it is refused (quick
    checks, low-label regimes)."""
    val_limit: Count | None = None
    """Use only N validation images, chosen like ``train_limit``."""
    label_fraction: Fraction | None = None
    """Keep this share of the training labels, class-balanced (round(share x class size) images per class, at
    least one), drawn with ``label_seed``; null keeps every image (low-label fine-tuning)."""
    label_seed: NonNegativeInt = 0
    crop_scale: tuple[Fraction, Fraction] = (0.08, 1.0)
    eval_crop: Fraction = 0.875
    """Share of the resized image the evaluation center crop keeps: MAE's 0.875 (224 of 256); 1 scores the whole
    image, as small images need (on 28-px Fashion-MNIST the border crop costs about a point of top-1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        lengths = {"python_length": self.python_length, "python_val_length": self.python_val_length}
        check_python_source(self.source, lengths)


@dataclass
class AugmentSection(Settings):
    """MAE's fine-tuning augmentation (appendix Table 9); set a field to 0/null to switch that piece off."""

    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    """timm RandAugment spec: magnitude 9, std 0.5 (RandAug(9, 0.5))."""
    mixup: NonNegative = 0.8
    cutmix: NonNegative = 1.0
    label_smoothing: ZeroToOne = 0.1
    random_erase: Probability = 0.25
    hflip: bool = True
    """Random horizontal flips (ConvMAE Sec. 3.4 turns them off for SSV2)."""


@dataclass
class TransferOptimSection(OptimFields):
    name: Literal["adamw", "lars", "sgd"] = "adamw"
    base_lr: Positive = 5e-4
    layer_decay: Fraction = 0.75
    """Layer-wise lr decay (1 = none); a layer n below the head learns at layer_decay**n times the rate."""
    betas: tuple[ZeroToOne, ZeroToOne] = (0.9, 0.999)
    momentum: ZeroToOne = 0.9
    """For ``lars`` and ``sgd``."""
    min_lr: NonNegative = 1e-6


@dataclass
class TransferTrainSection(LoopFields):
    epochs: Count = 10
    batch_size: Count = 64
    """Images per process per step (even, as Mixup/CutMix pair images)."""
    drop_path: ZeroToOne = 0.1
    log_every: Count = 20
    eval_batch_size: Count = 256
    eval_every: NonNegativeInt = 1
    """Validate (and write ``best``) every this many epochs and after the last; 0: after the last only."""
    keep_checkpoints: NonNegativeInt = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"batch_size must be even and at least 2, got {self.batch_size}")


@dataclass
class TransferConfig(Settings):
    """``protocol``: ``finetune`` (the whole encoder trains) or ``linprobe`` (frozen encoder, BN + linear)."""

    protocol: Literal["finetune", "linprobe"] = "finetune"
    model: EncoderSection = field(default_factory=EncoderSection)
    data: LabelledDataSection = field(default_factory=LabelledDataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: TransferOptimSection = field(default_factory=TransferOptimSection)
    train: TransferTrainSection = field(default_factory=TransferTrainSection)
    output: str = "runs/finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source_fits_model(self.data.source, self.model.name)
        self.optim.warmup_epochs = resolve_warmup(self.optim.warmup_epochs, self.train.epochs)


LINPROBE_DEFAULTS: dict[str, Any] = {
    "protocol": "linprobe",
    "augment": {"rand_augment": None, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "random_erase": 0.0},
    "optim": {"name": "lars", "base_lr": 0.1, "layer_decay": 1.0, "weight_decay": 0.0},
    "train": {"drop_path": 0.0},
    "output": "runs/linprobe",
}
"""MAE's linear probe (appendix Table 10): no augmentation but crops and flips, LARS, no weight decay."""


@dataclass
class KnnConfig(Settings):
    """Weighted kNN on frozen, L2-normalized pooled features (k=20, cosine, temperature 0.07)."""

    model: EncoderSection = field(default_factory=EncoderSection)
    data: LabelledDataSection = field(default_factory=LabelledDataSection)
    k: Count = 20
    temperature: Positive = 0.07
    batch_size: Count = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output: str | None = None
    """A JSON file for the result (null: print only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source_fits_model(self.data.source, self.model.name)


def _with_encoder_defaults(base: dict, explicit: dict) -> dict:
    """The command's defaults ``base``, then the encoder's (a mimkit checkpoint's model and input format, see
    :func:`checkpoint_defaults`, else :data:`DEFAULT_ENCODER_ARGS` unless a model is named), then ``explicit``."""
    model = explicit.get("model") if isinstance(explicit.get("model"), dict) else {}
    checkpoint = model.get("checkpoint")
    defaults = checkpoint_defaults(checkpoint, explicit) if isinstance(checkpoint, str) else {}
    if not defaults and "name" not in model:
        defaults = {"model": {"args": DEFAULT_ENCODER_ARGS}}
    return merged_sections(merged_sections(base, defaults), explicit)


def transfer_config(
    protocol: str, stored: dict, overrides: Sequence[str] = (), source: str = "the config"
) -> TransferConfig:
    """``protocol`` defaults (linprobe: MAE's probe), then the encoder's (:func:`_with_encoder_defaults`), then the
    config mapping ``stored`` (``source`` names it in errors), then ``key=value`` overrides."""
    base = LINPROBE_DEFAULTS if protocol == "linprobe" else {"protocol": protocol}
    if stored.get("protocol", protocol) != protocol:
        raise ConfigError(f"{source} is a '{stored['protocol']}' config; run it with `mimkit {stored['protocol']}`")
    return from_dict(TransferConfig, _with_encoder_defaults(base, apply_overrides(stored, list(overrides))))


def load_transfer_config(protocol: str, path: str | None = None, overrides: list[str] | None = None) -> TransferConfig:
    """:func:`transfer_config` of the YAML file at ``path`` (or of the defaults)."""
    return transfer_config(protocol, load_yaml(path) if path else {}, overrides or (), str(path))


def knn_config(stored: dict, overrides: Sequence[str] = ()) -> KnnConfig:
    """The encoder's defaults (:func:`_with_encoder_defaults`), then the config mapping ``stored``, then ``key=value``
    overrides."""
    return from_dict(KnnConfig, _with_encoder_defaults({}, apply_overrides(stored, list(overrides))))


def load_knn_config(path: str | None = None, overrides: list[str] | None = None) -> KnnConfig:
    """:func:`knn_config` of the YAML file at ``path`` (or of the defaults)."""
    return knn_config(load_yaml(path) if path else {}, overrides or ())
