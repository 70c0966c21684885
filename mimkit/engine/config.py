"""The pretraining configuration: YAML sections validated into typed dataclasses.

Every field has a default, and the defaults are the Quick start job (a tiny MAE on the sample photos, a
few CPU minutes). The paper recipes in ``configs/`` set their own values; ``docs/configs.md`` explains
each field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_schema import apply_overrides, from_dict, load_yaml
from mimkit.data.video import CLIP_SOURCES
from mimkit.models import model_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelSection:
    name: str = "mae_vit_tiny_patch16"
    """A name from ``mimkit.list_models()``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Overrides of that model's configuration fields (e.g. ``mask_ratio: 0.75``)."""

    def __post_init__(self) -> None:
        model_config(self.name, **self.args)  # a wrong name or field fails here, naming it


@dataclass
class DataSection:
    source: Literal["samples", "folder", "fashion_mnist", "sample_clips", "clips"] = "samples"
    """``samples``: scikit-image's photos; ``folder``: any folder of images; ``fashion_mnist``: its idx files;
    ``sample_clips``: clips panned and zoomed over the photos; ``clips``: a folder of clips (frame folders or video
    files). The clip sources need a video model."""
    path: str | None = None
    """The image folder (``folder``), the idx folder (``fashion_mnist``, default the Debian location) or the clip
    folder (``clips``)."""
    img_size: int = 128
    in_chans: Literal[1, 3] = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    """Random horizontal flips (off for motion-direction data such as SSV2)."""
    num_frames: int = 16
    """Frames per clip (clip sources only); the video model's ``num_frames`` follows it."""
    frame_stride: int = 4
    """Frames between two sampled frames of a clip (VideoMAE: 4 on K400, 2 on SSV2)."""
    samples_per_epoch: int | None = None
    """Random crops per epoch; default: the number of images (512 for the 18 sample photos)."""
    num_workers: int = 2

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each (in_chans={self.in_chans})")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        for name in ("num_frames", "frame_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class OptimSection:
    base_lr: float = 1.5e-3
    """Learning rate per 256 images: lr = base_lr * effective_batch / 256 (MAE's linear scaling rule)."""
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 1.0
    clip_grad: float | None = None
    """Clip the global gradient norm to this value; null = no clipping (MAE pretraining does not clip)."""


@dataclass
class TrainSection:
    epochs: int = 16
    batch_size: int = 32
    """Images per process per micro-step; effective batch = batch_size x accum_steps x processes."""
    accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` autocast on GPUs; on CPUs without native bf16 it is very slow."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    """Run the model's forward (and so its backward) through ``torch.compile``. It pays on GPUs; on a 2-core CPU
    it did not pay for a small MAE (0.92x after 80 s of compilation, ``shared/bench/official_cpu.md``), so check
    with ``mimkit bench --compile`` before using it there."""
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule still spans ``epochs``); a checkpoint is written."""
    checkpoint_every: int = 0
    """Also write a checkpoint every this many steps (0: only at the end of each epoch)."""
    keep_checkpoints: int = 2
    """Besides ``last``, keep the N most recent checkpoints as ``checkpoints/step_NNNNNNNN.safetensors`` (0: none)."""
    log_every: int = 10
    visualize_images: int = 4
    """Images in the end-of-epoch reconstruction grid (0: none)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: str = "runs/pretrain"

    def __post_init__(self) -> None:
        check_source_fits_model(self.data.source, self.model.name)


def check_source_fits_model(source: str, model_name: str) -> None:
    """A clip source needs a video model (one with ``num_frames``) and an image source an image model."""
    video_model = hasattr(model_config(model_name), "num_frames")
    if video_model != (source in CLIP_SOURCES):
        takes, gives = ("clips", "images") if video_model else ("images", "clips")
        choices = ", ".join(CLIP_SOURCES) if video_model else "an image source"
        raise ValueError(
            f"data.source '{source}' gives {gives} but model '{model_name}' takes {takes}; choose data.source from "
            f"{choices}"
        )


def load_pretrain_config(path: str | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML config (or start from the defaults), apply ``key=value`` overrides, validate."""
    data = load_yaml(path) if path else {}
    return from_dict(PretrainConfig, apply_overrides(data, overrides or []))
