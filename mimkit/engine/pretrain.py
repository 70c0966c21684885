"""The pretraining loop shared by every method.

One optimizer step = ``accum_steps`` micro-batches on each of the processes. Data order, augmentation
and masking noise are pure functions of (seed, step), so a run is reproducible across worker counts,
process counts (the noise is drawn for the global batch and sliced per process) and resumes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mimkit.config_schema import to_dict
from mimkit.data import (
    AugmentedDataset,
    StepSampler,
    batch_loader,
    eval_transform,
    load_readable,
    pretrain_transform,
)
from mimkit.data.catalog import open_source
from mimkit.data.dataset_source import python_dataset
from mimkit.data.shards import open_shards
from mimkit.data.sources import ImageSource
from mimkit.data.video import ClipTransform, build_clip_source
from mimkit.engine.callbacks import Callback, CallbackList
from mimkit.engine.checkpoint import TrainPosition
from mimkit.engine.config import DataSection, PretrainConfig
from mimkit.engine.config_parts import CLIP_SOURCES
from mimkit.engine.distributed import DistInfo, init_distributed, sum_across_processes
from mimkit.engine.loss_terms import StepLosses, split_loss
from mimkit.engine.metrics import MetricsLog
from mimkit.engine.optim import build_optimizer, build_scheduler, effective_lr
from mimkit.engine.precision import Precision
from mimkit.engine.resume_config import RunGeometry
from mimkit.engine.run_folder import METRICS_NAME
from mimkit.engine.run_session import (
    RunSession,
    advance,
    check_epoch_progress,
    report_step,
    seed_global_generators,
)
from mimkit.engine.step_timer import StepTimer
from mimkit.engine.strategy import parallelize
from mimkit.errors import MimkitError, NonFiniteLossError
from mimkit.methods.base import PretrainingModel
from mimkit.models import create_model
from mimkit.visualize import grid_picture, reconstruction_grid, save_picture

SAMPLE_CROPS_PER_EPOCH = 512


@dataclass
class RunSummary:
    """What a finished (or stopped) run produced."""

    output: Path
    checkpoint: Path | None = None
    metrics: Path | None = None
    reconstructions: list[Path] = field(default_factory=list)
    steps: int = 0
    last_loss: float = float("nan")
    skipped_images: int = 0
    seconds: float = 0.0


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The masking noise of optimizer step ``step`` is drawn from this generator, for the whole global batch."""
    return torch.Generator().manual_seed((seed * 7_368_787 + step) % (2**63))


def data_pipeline(
    data: DataSection, seed: int, dataset: object | None = None
) -> tuple[ImageSource, Callable, Callable, Callable]:
    """The source, the training augmentation, the deterministic transform of the reconstruction pictures and the
    normalization of a training batch on its device: the augmentation gives uint8 pixels, so loader workers pass on
    a quarter of the bytes (see :class:`~mimkit.data.transforms.PretrainTransform`). Clip sources get the same image
    transforms applied to every sampled frame alike. Shards are read in ``seed``'s order. ``dataset``: the dataset
    passed in Python, for ``data.source: python``."""
    frames = pretrain_transform(
        data.img_size, data.in_chans, data.mean, data.std, data.crop_scale, data.hflip, uint8=True
    )
    train, viz = frames, eval_transform(data.img_size, data.in_chans, data.mean, data.std)
    source = python_dataset(dataset, data.source, data.python_length)
    if data.source == "shards":
        source = open_shards(data.path, data.cache, seed, data.samples_per_epoch, data.canonical_nodes)
    elif data.source in CLIP_SOURCES:
        source = build_clip_source(data.source, data.path)
        train = ClipTransform(frames, data.num_frames, data.frame_stride, random_start=True)
        viz = ClipTransform(viz, data.num_frames, data.frame_stride, random_start=False)
    elif source is None:
        source = open_source(data.source, data.path, data.split, data.image_column)
    return source, train, viz, frames.normalize_batch


def build_pretrain_model(config: PretrainConfig) -> PretrainingModel:
    """The configured model, with what the data section decides filled in (:meth:`PretrainConfig.model_args`)."""
    return create_model(config.model.name, **config.model_args())


class Pretrainer:
    """Runs :class:`PretrainConfig`; ``run()`` returns a :class:`RunSummary`.

    ``resume``, ``overwrite`` and ``allow_changes``: see :class:`~mimkit.engine.run_session.RunSession`. Building
    a Pretrainer reads and checks but writes nothing; :meth:`run` takes the output folder and trains. ``dataset``:
    the images of a ``data.source: python`` run (:func:`mimkit.pretrain`). ``callbacks``:
    :class:`~mimkit.engine.callbacks.Callback` instances called at the run's events.
    """

    def __init__(
        self,
        config: PretrainConfig,
        resume: str | Path | None = None,
        overwrite: bool = False,
        allow_changes: bool = False,
        *,
        dataset: object | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.dist: DistInfo = init_distributed(config.train.device)
        self.callbacks = CallbackList(callbacks, self.dist.is_main, self.dist.device)
        self.should_stop = False
        """Set by a callback to end the run after the current step (see :mod:`mimkit.engine.callbacks`)."""
        self.output = Path(config.output)
        self.session = RunSession(config, self.dist, resume, overwrite, allow_changes, tag="pretrain")
        self.checkpoint_path = self.session.folder.last_checkpoint
        train, data = config.train, config.data
        seed_global_generators(train.seed + self.dist.rank)

        self.source, transform, viz_transform, self.normalize_batch = data_pipeline(data, train.seed, dataset)
        dataset = AugmentedDataset(self.source, transform, seed=train.seed)
        self.micro_batch_global = train.batch_size * self.dist.world_size
        self.samples_per_epoch = data.samples_per_epoch or (
            SAMPLE_CROPS_PER_EPOCH if data.source == "samples" else len(self.source)
        )
        self.steps_per_epoch = self.samples_per_epoch // (self.micro_batch_global * train.accum_steps)
        if self.steps_per_epoch < 1:
            raise MimkitError(
                f"an epoch of {self.samples_per_epoch} images is smaller than one optimizer step "
                f"({self.micro_batch_global * train.accum_steps} images); lower train.batch_size or raise "
                "data.samples_per_epoch"
            )
        self.geometry = RunGeometry(self.micro_batch_global * train.accum_steps, self.steps_per_epoch)
        self.total_steps = self.steps_per_epoch * train.epochs
        if data.source == "shards":  # streaming splits each epoch between processes and workers, in its order
            dataset = self.sampler = self.source.stream.read_in_steps(dataset, train.batch_size, self.dist.world_size)
            order = None
        else:
            self.sampler = order = StepSampler(
                len(self.source),
                self.micro_batch_global,
                self.steps_per_epoch * train.accum_steps,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                seed=train.seed,
            )
        self.loader = batch_loader(dataset, train.batch_size, order, data.num_workers, self.dist.device)

        self.model = build_pretrain_model(config).to(self.dist.device)
        self.parallel = parallelize(
            self.model, self.dist, train.strategy, train.precision, train.activation_checkpointing
        )
        self.lr = effective_lr(config.optim.base_lr, self.geometry.images_per_step)
        self.optimizer = build_optimizer(self.model, self.lr, config.optim.weight_decay, config.optim.betas)
        warmup = round(config.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.optim.min_lr)
        self.position = TrainPosition()
        self.precision = Precision(train.precision, self.dist.device)
        if self.session.resuming:
            _, self.position = self.session.restore(self.model, self.optimizer, self.geometry, self.precision)
        self.step_module = self.parallel.module
        if train.compile:
            self.step_module = torch.compile(self.step_module)
        self.viz_images, _ = load_readable(self.source, viz_transform, limit=train.visualize_images, seed=train.seed)
        self.viz_noise = None
        if self.viz_images is not None:
            image_hw = tuple(self.viz_images.shape[-2:])
            self.viz_noise = self.model.sample_noise(len(self.viz_images), image_hw, _step_generator(train.seed, -1))

    def describe(self) -> list[str]:
        """The start-up summary: data, schedule, batch and learning rate, model, device, output."""
        train, data = self.config.train, self.config.data
        where = f" at {data.path}" if data.path else ""
        accumulation = f" x {train.accum_steps} accumulated" if train.accum_steps > 1 else ""
        per_step = self.geometry.images_per_step
        return [
            f"pretrain {self.config.model.name}",
            f"data:       {len(self.source)} images ({data.source}{where}), {self.samples_per_epoch} random crops of "
            f"{data.img_size} px per epoch",
            f"batch:      {per_step} images per step ({train.batch_size} per process{accumulation}), lr "
            f"{self.lr:.3g} (base_lr {self.config.optim.base_lr:g} x {per_step} / 256)",
            *self.session.summary(self.model, self.steps_per_epoch, self.total_steps),
        ]

    def _save(self, last_loss: float) -> Path:
        """Write ``last``; its record holds the run's config, the resolved model and the last step's loss (read by
        the model card of a ``save_pretrained`` folder)."""
        record = to_dict(self.config)
        record["resolved_model"] = to_dict(self.model.config)
        if math.isfinite(last_loss):
            record["last_loss"] = last_loss
        path = self.session.save(
            "last",
            self.model,
            record,
            self.position,
            self.geometry,
            self.optimizer,
            keep=self.config.train.keep_checkpoints,
            scaler=self.precision.state(),
        )
        self.callbacks.checkpoint(self, path)
        return path

    def _reconstructions(self) -> torch.Tensor | None:
        """The reconstruction picture of the fixed images, ``(C, H, W)`` in [0, 1], on the main process."""
        if self.viz_images is None or not (self.dist.is_main or self.parallel.sharded):
            return None  # a sharded model's forward is collective: every process runs it, the main one saves
        tiles = reconstruction_grid(
            self.model,
            self.viz_images.to(self.dist.device),
            self.config.data.mean,
            self.config.data.std,
            noise=self.viz_noise.to(self.dist.device),
        )
        return grid_picture(tiles.cpu()) if self.dist.is_main else None

    def _accumulate(self, batch: dict, micro: int, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward/backward of micro-batch ``micro`` of the current step; returns its detached loss and loss parts.

        ``noise`` holds the masking noise of the whole global step; this process takes its rows.
        """
        train = self.config.train
        images = self.normalize_batch(batch["image"].to(self.dist.device, non_blocking=True))
        first = micro * self.micro_batch_global + self.dist.rank * train.batch_size
        last_micro = micro == train.accum_steps - 1
        sync = self.parallel.gradient_sync(last_micro)
        with sync:
            with self.precision.autocast():
                loss, terms = split_loss(
                    self.step_module(images, noise=noise[first : first + train.batch_size].to(self.dist.device))
                )
            self.precision.backward(loss / train.accum_steps)
        return terms

    def _apply_update(self, losses: StepLosses) -> dict[str, float]:
        """Check the step's loss (averaged over micro-batches and processes), then step the optimizer (under fp16 the
        scaler may skip the update for overflowing gradients: counted, not fatal). Returns the step's loss terms."""
        terms = losses.mean(self.config.train.accum_steps)
        loss_value = terms["loss"]
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {self.position.step + 1} (epoch {self.position.epoch}); "
                f"stopping without applying this update. {self.session.last_good()}"
            )
        self.precision.step(self.model, self.optimizer, self.scheduler, self.position.step, self.config.optim.clip_grad)
        return terms

    def run(self) -> RunSummary:
        train = self.config.train
        main = self.dist.is_main
        start = time.perf_counter()
        stop_at = self.session.stop_at(self.total_steps)
        summary = RunSummary(output=self.output, metrics=self.output / METRICS_NAME if main else None)
        if self.session.finished(self.position.step, stop_at, self.total_steps):
            summary.checkpoint, summary.steps = self.session.resume_path, self.position.step
            self.callbacks.run_end(self, summary)
            return summary
        self.model.train()
        with self.session.records(self.position.step, stop_at, train.log_every, self.describe()) as (
            metrics,
            progress,
        ):
            timer = StepTimer(self.dist.device)
            while self.position.step < stop_at and not self.should_stop:
                epoch = self.position.epoch
                self.sampler.set_position(epoch, self.position.step_in_epoch * train.accum_steps)
                steps_before = self.position.step
                window_start, window_images = time.perf_counter(), 0
                micro, losses = 0, StepLosses()
                for batch in timer.batches(self.loader):
                    summary.skipped_images += batch["skipped"]
                    if micro == 0:
                        generator = _step_generator(train.seed, self.position.step)
                        noise = self.model.sample_noise(
                            self.geometry.images_per_step, tuple(batch["image"].shape[-2:]), generator
                        )
                    losses.add(self._accumulate(batch, micro, noise))
                    micro += 1
                    if micro < train.accum_steps:
                        continue
                    terms = self._apply_update(losses)
                    window_images += self.geometry.images_per_step
                    micro = 0
                    epoch_ended = advance(self.position, self.steps_per_epoch)
                    summary.last_loss = terms["loss"]
                    lr = self.optimizer.param_groups[0]["lr"]
                    speed = window_images / max(time.perf_counter() - window_start, 1e-9)
                    record = {"step": self.position.step, "epoch": epoch, **terms, "lr": lr}
                    record = report_step(metrics, progress, timer, self.precision, record, speed)
                    self.callbacks.step(self, record)
                    if epoch_ended or self.position.step >= stop_at or self.should_stop:
                        break
                    if train.checkpoint_every and self.position.step % train.checkpoint_every == 0:
                        summary.checkpoint = self._save(summary.last_loss)
                check_epoch_progress(steps_before, self.position, self.steps_per_epoch)
                if self.position.epoch > epoch:
                    summary.checkpoint = self._save(summary.last_loss)
                    self._add_picture(summary, f"epoch_{epoch:04d}", metrics)
                    progress.message(
                        f"epoch {epoch} done: loss {summary.last_loss:.4f}, checkpoint {self.checkpoint_path}"
                    )
                    self.callbacks.epoch_end(self, epoch, record)
            if summary.checkpoint is None or self.position.step_in_epoch:
                summary.checkpoint = self._save(summary.last_loss)
            if self.position.step_in_epoch:
                name = f"epoch_{self.position.epoch:04d}_step_{self.position.step:08d}"
                self._add_picture(summary, name, metrics)
            skipped = torch.tensor(summary.skipped_images, device=self.dist.device)
            summary.skipped_images = int(sum_across_processes(skipped).item())
            if summary.skipped_images:
                progress.message(f"warning: skipped {summary.skipped_images} unreadable or truncated image loads")
        summary.steps = self.position.step
        summary.seconds = time.perf_counter() - start
        self.callbacks.run_end(self, summary)
        return summary

    def _add_picture(self, summary: RunSummary, name: str, metrics: MetricsLog) -> None:
        """Write the reconstruction picture ``reconstructions/<name>.png`` and show it in the trackers."""
        picture = self._reconstructions()
        if picture is not None:
            summary.reconstructions.append(save_picture(picture, self.output / "reconstructions" / f"{name}.png"))
            metrics.image(self.position.step, "reconstructions", picture)


def pretrain(
    config: PretrainConfig,
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> RunSummary:
    """Pretrain as ``config`` says; ``resume`` is a checkpoint path or ``'auto'`` (the run's last one), see
    :class:`Pretrainer`."""
    return Pretrainer(config, resume, overwrite, allow_changes).run()
