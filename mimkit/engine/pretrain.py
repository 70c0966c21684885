"""The pretraining loop shared by every method.

One optimizer step = ``accum_steps`` micro-batches on each of the processes. Data order, augmentation
and masking noise are pure functions of (seed, step), so a run is reproducible across worker counts,
process counts (the noise is drawn for the global batch and sliced per process) and resumes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from mimkit.config_schema import to_dict
from mimkit.data import (
    AugmentedDataset,
    StepSampler,
    batch_loader,
    build_source,
    eval_transform,
    load_readable,
    pretrain_transform,
)
from mimkit.data.sources import ImageSource
from mimkit.data.video import ClipTransform, build_clip_source
from mimkit.engine.checkpoint import TrainPosition, load_checkpoint, restore_rng, save_checkpoint
from mimkit.engine.checkpoint_checks import check_position_fits, load_model_state, load_optimizer_state
from mimkit.engine.config import DataSection, PretrainConfig
from mimkit.engine.config_parts import CLIP_SOURCES
from mimkit.engine.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    mean_across_processes,
    sum_across_processes,
)
from mimkit.engine.metrics import MetricsLog, ProgressDisplay
from mimkit.engine.optim import build_optimizer, build_scheduler, effective_lr
from mimkit.errors import MimkitError, NonFiniteError, NonFiniteLossError
from mimkit.methods.base import PretrainingModel
from mimkit.models import create_model, model_config
from mimkit.visualize import reconstruction_grid, save_reconstruction_grid

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


def data_pipeline(data: DataSection) -> tuple[ImageSource, Callable, Callable]:
    """The source, the training augmentation and the deterministic transform of the reconstruction pictures;
    clip sources get the same image transforms applied to every sampled frame alike."""
    train = pretrain_transform(data.img_size, data.in_chans, data.mean, data.std, data.crop_scale, data.hflip)
    viz = eval_transform(data.img_size, data.in_chans, data.mean, data.std)
    if data.source not in CLIP_SOURCES:
        return build_source(data.source, data.path), train, viz
    return (
        build_clip_source(data.source, data.path),
        ClipTransform(train, data.num_frames, data.frame_stride, random_start=True),
        ClipTransform(viz, data.num_frames, data.frame_stride, random_start=False),
    )


def build_pretrain_model(config: PretrainConfig) -> PretrainingModel:
    """The configured model, with input channels taken from the data section (and, for models whose frozen
    teacher must undo the input normalization, MR-MAE's ``input_mean``/``input_std``, the data mean and std)."""
    args = dict(config.model.args)
    if args.setdefault("in_chans", config.data.in_chans) != config.data.in_chans:
        raise MimkitError(f"model.args.in_chans={args['in_chans']} disagrees with data.in_chans={config.data.in_chans}")
    args.setdefault("img_size", config.data.img_size)
    base = model_config(config.model.name)
    if hasattr(base, "num_frames") and args.setdefault("num_frames", config.data.num_frames) != config.data.num_frames:
        raise MimkitError(
            f"model.args.num_frames={args['num_frames']} disagrees with data.num_frames={config.data.num_frames}"
        )
    for name, data_name, value in (("input_mean", "mean", config.data.mean), ("input_std", "std", config.data.std)):
        if hasattr(base, name) and list(args.setdefault(name, value)) != list(value):
            raise MimkitError(f"model.args.{name}={args[name]} disagrees with data.{data_name}={value}")
    return create_model(config.model.name, **args)


class Pretrainer:
    """Runs :class:`PretrainConfig`; ``run()`` returns a :class:`RunSummary`."""

    def __init__(self, config: PretrainConfig, resume: str | None = None) -> None:
        self.config = config
        self.dist: DistInfo = init_distributed(config.train.device)
        self.output = Path(config.output)
        self.checkpoint_path = self.output / "checkpoints" / "last.safetensors"
        train, data = config.train, config.data
        torch.manual_seed(train.seed + self.dist.rank)

        self.source, transform, viz_transform = data_pipeline(data)
        dataset = AugmentedDataset(self.source, transform, seed=train.seed)
        self.micro_batch_global = train.batch_size * self.dist.world_size
        samples = data.samples_per_epoch or (SAMPLE_CROPS_PER_EPOCH if data.source == "samples" else len(self.source))
        self.steps_per_epoch = samples // (self.micro_batch_global * train.accum_steps)
        if self.steps_per_epoch < 1:
            raise MimkitError(
                f"an epoch of {samples} images is smaller than one optimizer step "
                f"({self.micro_batch_global * train.accum_steps} images); lower train.batch_size or raise "
                "data.samples_per_epoch"
            )
        self.total_steps = self.steps_per_epoch * train.epochs
        self.sampler = StepSampler(
            len(self.source),
            self.micro_batch_global,
            self.steps_per_epoch * train.accum_steps,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=train.seed,
        )
        self.loader = batch_loader(dataset, train.batch_size, self.sampler, data.num_workers, self.dist.device)

        self.model = build_pretrain_model(config).to(self.dist.device)
        self.lr = effective_lr(config.optim.base_lr, self.micro_batch_global * train.accum_steps)
        self.optimizer = build_optimizer(self.model, self.lr, config.optim.weight_decay, config.optim.betas)
        warmup = round(config.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.optim.min_lr)
        self.position = TrainPosition()
        self.resumed_from: Path | None = None
        resume_path = self._resume_path(resume)
        if resume_path is not None:
            self._load(resume_path)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None
            )
            if self.dist.world_size > 1
            else None
        )
        self.step_module = self.ddp or self.model
        if train.compile:
            self.step_module = torch.compile(self.step_module)
        self.viz_images, _ = load_readable(self.source, viz_transform, limit=train.visualize_images)
        self.viz_noise = None
        if self.viz_images is not None:
            image_hw = tuple(self.viz_images.shape[-2:])
            self.viz_noise = self.model.sample_noise(len(self.viz_images), image_hw, _step_generator(train.seed, -1))

    def _resume_path(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume == "auto":
            return self.checkpoint_path if self.checkpoint_path.is_file() else None
        return Path(resume)

    def _load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        saved_name = checkpoint.config.get("model", {}).get("name")
        if saved_name != self.config.model.name:
            raise MimkitError(f"checkpoint {path} is for model '{saved_name}', not '{self.config.model.name}'")
        check_position_fits(checkpoint.position, self.steps_per_epoch, path)
        load_model_state(self.model, checkpoint.model, path)
        if checkpoint.optimizer is not None:
            load_optimizer_state(self.optimizer, checkpoint.optimizer, path)
        if checkpoint.rng is not None:
            restore_rng(checkpoint.rng)
        self.position = checkpoint.position
        self.resumed_from = path

    def _save(self) -> Path:
        record = to_dict(self.config)
        record["resolved_model"] = to_dict(self.model.config)
        if self.dist.is_main:
            try:
                save_checkpoint(self.checkpoint_path, self.model, record, self.position, self.optimizer)
            except NonFiniteError as err:
                where = f"by step {self.position.step}: {err}; stopping. {self._last_good()}"
                raise NonFiniteError(f"the weights or optimizer state became non-finite {where}") from err
        barrier()
        return self.checkpoint_path

    def _last_good(self) -> str:
        """Where the run can be picked up: every checkpoint written is finite (``save_checkpoint`` refuses others)."""
        written = "" if self.checkpoint_path.exists() else " (none written yet)"
        return f"The last good checkpoint is {self.checkpoint_path}{written}"

    def _write_reconstructions(self, epoch: int) -> Path | None:
        if self.viz_images is None or not self.dist.is_main:
            return None
        tiles = reconstruction_grid(
            self.model,
            self.viz_images.to(self.dist.device),
            self.config.data.mean,
            self.config.data.std,
            noise=self.viz_noise.to(self.dist.device),
        )
        return save_reconstruction_grid(tiles.cpu(), self.output / "reconstructions" / f"epoch_{epoch:04d}.png")

    def _accumulate(self, batch: dict, micro: int, noise: torch.Tensor) -> torch.Tensor:
        """Forward/backward of micro-batch ``micro`` of the current step; returns its detached loss.

        ``noise`` holds the masking noise of the whole global step; this process takes its rows.
        """
        train = self.config.train
        images = batch["image"].to(self.dist.device, non_blocking=True)
        first = micro * self.micro_batch_global + self.dist.rank * train.batch_size
        last_micro = micro == train.accum_steps - 1
        sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else nullcontext()
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
        with sync:
            with autocast:
                loss = self.step_module(images, noise=noise[first : first + train.batch_size].to(self.dist.device))[
                    "loss"
                ]
            (loss / train.accum_steps).backward()
        return loss.detach().float()

    def _apply_update(self, loss_sum: torch.Tensor) -> float:
        """Check the step's loss (averaged over micro-batches and processes), then step the optimizer."""
        loss_value = mean_across_processes(loss_sum / self.config.train.accum_steps).item()
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {self.position.step + 1} (epoch {self.position.epoch}); "
                f"stopping without applying this update. {self._last_good()}"
            )
        self.scheduler.step_update(self.position.step)
        if self.config.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def run(self) -> RunSummary:
        train = self.config.train
        main = self.dist.is_main
        start = time.perf_counter()
        resumed = self.resumed_from is not None
        metrics = MetricsLog(self.output, main, resume_step=self.position.step if resumed else None)
        stop_at = min(self.total_steps, train.max_steps or self.total_steps)
        progress = ProgressDisplay(stop_at, self.position.step, main, train.log_every)
        summary = RunSummary(output=self.output, metrics=metrics.path if main else None)
        if resumed:
            progress.message(f"resumed from {self.resumed_from} at step {self.position.step}")
        self.model.train()
        try:
            while self.position.step < stop_at:
                epoch = self.position.epoch
                self.sampler.set_position(epoch, self.position.step_in_epoch * train.accum_steps)
                window_start, window_images = time.perf_counter(), 0
                micro, loss_sum = 0, torch.zeros((), device=self.dist.device)
                for batch in self.loader:
                    summary.skipped_images += batch["skipped"]
                    if micro == 0:
                        step_images = self.micro_batch_global * train.accum_steps
                        generator = _step_generator(train.seed, self.position.step)
                        noise = self.model.sample_noise(step_images, tuple(batch["image"].shape[-2:]), generator)
                    loss_sum += self._accumulate(batch, micro, noise)
                    micro += 1
                    if micro < train.accum_steps:
                        continue
                    loss = self._apply_update(loss_sum)
                    window_images += self.micro_batch_global * train.accum_steps
                    micro, loss_sum = 0, torch.zeros((), device=self.dist.device)
                    self.position.step += 1
                    self.position.step_in_epoch += 1
                    summary.last_loss = loss
                    lr = self.optimizer.param_groups[0]["lr"]
                    speed = window_images / max(time.perf_counter() - window_start, 1e-9)
                    metrics.write(
                        {
                            "step": self.position.step,
                            "epoch": epoch,
                            "loss": loss,
                            "lr": lr,
                            "images_per_s": speed,
                        }
                    )
                    progress.update(self.position.step, epoch, loss, lr, speed)
                    if train.checkpoint_every and self.position.step % train.checkpoint_every == 0:
                        summary.checkpoint = self._save()
                    if self.position.step >= stop_at:
                        break
                if self.position.step_in_epoch == self.steps_per_epoch:
                    self.position.epoch += 1
                    self.position.step_in_epoch = 0
                    summary.checkpoint = self._save()
                    picture = self._write_reconstructions(epoch)
                    if picture is not None:
                        summary.reconstructions.append(picture)
                    progress.message(
                        f"epoch {epoch} done: loss {summary.last_loss:.4f}, checkpoint {self.checkpoint_path}"
                    )
            if summary.checkpoint is None or self.position.step_in_epoch:
                summary.checkpoint = self._save()
        finally:
            progress.close()
            metrics.close()
        skipped = torch.tensor(summary.skipped_images, device=self.dist.device)
        summary.skipped_images = int(sum_across_processes(skipped).item())
        if summary.skipped_images and main:
            print(f"warning: skipped {summary.skipped_images} unreadable or truncated image loads", flush=True)
        summary.steps = self.position.step
        summary.seconds = time.perf_counter() - start
        return summary


def pretrain(config: PretrainConfig, resume: str | None = None) -> RunSummary:
    """Pretrain as ``config`` says; ``resume`` is a checkpoint path or ``'auto'`` (the run's last one)."""
    return Pretrainer(config, resume).run()
