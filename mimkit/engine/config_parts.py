"""The parts the run configurations are composed of: image data, optimizer and training-loop fields shared by
pretraining (:mod:`mimkit.engine.config`) and transfer (:mod:`mimkit.eval.config`). Each field and its range
are written here once; a section redeclares a field only to give it another default, with the same type.
Importing this module does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mimkit.config_schema import Settings
from mimkit.config_types import Count, Finite, Fraction, NonNegative, NonNegativeInt, Positive, ZeroToOne
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD

CLIP_SOURCES = ("sample_clips", "clips")
"""Data sources that give clips (for video models) rather than images."""
PYTHON_SOURCE = "python"
"""The data source of a dataset passed in Python (:mod:`mimkit.api`); the config records its length."""
PYTHON_LENGTH_FIELDS = {"dataset": "python_length", "val_dataset": "python_val_length"}
"""The data field that records the length of each dataset argument."""


def check_python_source(source: str, lengths: dict[str, int | None]) -> None:
    """``data.source: python`` and the recorded dataset lengths (``lengths``: field name to value) go together: the
    functions of :mod:`mimkit.api` set both; a config file or the command line cannot give a dataset."""
    if source == PYTHON_SOURCE and None in lengths.values():
        raise ValueError(
            f"data.source '{PYTHON_SOURCE}' reads a dataset passed in Python (mimkit.pretrain(config, dataset), "
            "mimkit.finetune(...)); from the command line or a config file read folder, filelist or hf_datasets"
        )
    stray = [name for name, value in lengths.items() if value is not None and source != PYTHON_SOURCE]
    if stray:
        raise ValueError(f"data.{stray[0]} belongs to data.source '{PYTHON_SOURCE}'; leave it out for '{source}'")

TrackerName = Literal["jsonl", "tensorboard", "csv", "wandb", "mlflow"]
"""Where a run's records can go (:mod:`mimkit.engine.trackers`); ``metrics.jsonl`` is written in any case."""


def check_min_max(name: str, bounds: tuple[float, float], rule: str = "min <= max") -> None:
    """A ``(min, max)`` range field (each bound already range-checked by its type) must not be reversed."""
    if bounds[0] > bounds[1]:
        raise ValueError(f"{name} must satisfy {rule}, got {bounds}")


def resolve_warmup(warmup_epochs: float | None, epochs: int) -> float:
    """The warm-up length in epochs: as configured, or a tenth of the run when null (MAE warms up 40 of 800
    pretraining epochs and 5 of 100 fine-tuning ones). A warm-up as long as the run is refused: it never reaches the
    peak learning rate and leaves no cosine decay (the schedule used to clamp it silently)."""
    if warmup_epochs is None:
        return epochs / 10
    if warmup_epochs >= epochs:
        raise ValueError(
            f"optim.warmup_epochs ({warmup_epochs:g}) must be shorter than train.epochs ({epochs}); set it to a "
            "tenth of the run or leave it out (null: a tenth)"
        )
    return warmup_epochs


@dataclass
class ImageInputFields(Settings):
    """What every command's images become: size, channels and normalization; loader workers."""

    img_size: Count = 128
    in_chans: Literal[1, 3] = 3
    mean: list[Finite] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[Positive] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: NonNegativeInt = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each (in_chans={self.in_chans})")


@dataclass
class ImageDataFields(ImageInputFields):
    """Classification and pretraining images: the input fields, crop scale and clip sampling."""

    crop_scale: tuple[Fraction, Fraction] = (0.2, 1.0)
    """Random-resized-crop area range (share of the image)."""
    num_frames: Count = 16
    """Frames per clip (clip sources only); the video model's ``num_frames`` follows it."""
    frame_stride: Count = 4
    """Frames between two sampled frames of a clip (VideoMAE: 4 on K400, 2 on SSV2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_max("crop_scale", self.crop_scale, "0 < min <= max <= 1")


@dataclass
class ImageColumnFields(Settings):
    """Where a Hugging Face dataset (``data.source: hf_datasets``) holds its images."""

    image_column: str = "image"
    """The column of the images (``datasets.Image`` features, or arrays/tensors as :mod:`mimkit.data.items` reads)."""


@dataclass
class OptimizerFields(Settings):
    """AdamW's settings, the floor of the schedule and gradient clipping, as every command has them."""

    min_lr: NonNegative = 0.0
    """The learning rate the schedule decays to."""
    weight_decay: NonNegative = 0.05
    betas: tuple[ZeroToOne, ZeroToOne] = (0.9, 0.95)
    clip_grad: Positive | None = None
    """Clip the global gradient norm to this value; null = no clipping (MAE pretraining does not clip)."""


@dataclass
class OptimFields(OptimizerFields):
    """AdamW (or the transfer optimizers) with a per-iteration linear warm-up and cosine decay, the learning rate
    scaled with the batch."""

    base_lr: Positive = 1.5e-3
    """Learning rate per 256 images: lr = base_lr * effective_batch / 256 (MAE's linear scaling rule)."""
    warmup_epochs: NonNegative | None = None
    """Linear warm-up epochs; null: a tenth of ``train.epochs`` (:func:`resolve_warmup`)."""


@dataclass
class LoopFields(Settings):
    """The training loop: schedule length, batch, precision, device, seed, stopping and logging."""

    epochs: Count = 16
    batch_size: Count = 32
    """Images per process per step."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """``bf16`` autocast on GPUs (on CPUs without native bf16 it is very slow); ``fp16`` autocast with a gradient
    scaler, for GPUs without bf16 (V100): see :mod:`mimkit.engine.precision`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How several processes share the model: ``ddp`` keeps a whole copy in each; ``fsdp`` (FSDP2) shards every
    block's parameters, gradients and optimizer state over the processes (needs torchrun with 2+ processes) and
    writes sharded checkpoints (``checkpoints/last.dcp``)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them: less memory, ~1/3 more
    compute."""
    seed: NonNegativeInt = 0
    max_steps: Count | None = None
    """Stop after this many optimizer steps (the schedule still spans ``epochs``); a checkpoint is written."""
    log_every: Count = 10
    trackers: list[TrackerName] = field(default_factory=lambda: ["tensorboard"])
    """Where the records go besides ``metrics.jsonl`` (always written): ``tensorboard``, ``csv`` (``metrics.csv``),
    ``wandb`` (offline unless ``WANDB_MODE`` says otherwise), ``mlflow`` (``MLFLOW_TRACKING_URI`` or a file store in
    the run folder); [] for ``metrics.jsonl`` alone. May change on resume. See ``docs/trackers.md``."""
    checkpoint_every: NonNegativeInt = 0
    """Also write ``last`` every this many steps, for a mid-epoch resume (0: only at the end of each epoch)."""
    keep_checkpoints: NonNegativeInt = 2
    """Besides ``last`` (and a transfer run's ``best``), keep the N most recent checkpoints as
    ``checkpoints/step_NNNNNNNN.safetensors`` (0: none)."""


@dataclass
class AccumulationFields(Settings):
    """Gradient accumulation, for training loops that split an optimizer step into micro-batches."""

    accum_steps: Count = 1
    """Micro-batches per optimizer step; effective batch = batch_size x accum_steps x processes."""
