"""The training loop of ``mimkit detect`` and ``mimkit segment``: the engine's run rules (output folder, lock,
exact resume, atomic checkpoints, progress, TensorBoard, DDP under torchrun, bf16/fp16 autocast) around a
:class:`~mimkit.dense.task.DenseTask`, which says what the model, data, loss and evaluation are.

Every ``train.eval_every`` steps and at the end the task evaluates the validation set; the numbers go to
``OUTPUT/eval.json`` (the latest evaluation, with the step), the metrics log and TensorBoard, and a picture of
predictions to ``OUTPUT/pictures/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mimkit.config_schema import to_dict
from mimkit.data import StepSampler
from mimkit.dense.backbones import build_dense_backbone
from mimkit.dense.schedule import dense_scheduler
from mimkit.dense.task import DenseTask
from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.callbacks import Callback, CallbackList
from mimkit.engine.checkpoint import TrainPosition
from mimkit.engine.distributed import init_distributed
from mimkit.engine.loss_terms import StepLosses
from mimkit.engine.metrics import MetricsLog, ProgressDisplay
from mimkit.engine.optim import adamw, layer_decay_param_groups
from mimkit.engine.precision import Precision
from mimkit.engine.resume_config import RunGeometry
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
from mimkit.eval.loading import load_encoder, resolved_encoder_config

EVAL_FILE = "eval.json"


@dataclass
class DenseSummary:
    output: Path
    steps: int = 0
    seconds: float = 0.0
    last_loss: float = math.nan
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last evaluation (what ``eval.json`` holds)."""
    checkpoint: Path | None = None
    picture: Path | None = None


class DenseTrainer:
    """Runs a detection or segmentation config; ``run()`` returns a :class:`DenseSummary`.

    ``resume`` (``'auto'`` or a checkpoint path), ``overwrite``, ``allow_changes`` and ``callbacks``: as for
    pretraining."""

    def __init__(
        self,
        task_type: type[DenseTask],
        config: Any,
        resume: str | Path | None = None,
        overwrite: bool = False,
        allow_changes: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        train, data, model_section = config.train, config.data, config.model
        self.dist = init_distributed(train.device)
        self.callbacks = CallbackList(callbacks, self.dist.is_main, self.dist.device)
        self.should_stop = False
        """Set by a callback to end the run after the current step (see :mod:`mimkit.engine.callbacks`)."""
        self.session = RunSession(config, self.dist, resume, overwrite, allow_changes, tag=task_type.tag)
        seed_global_generators(train.seed + self.dist.rank)
        self.output = Path(config.output)
        self.task = task_type(config, self.dist)

        args = model_section.encoder_args(data.img_size, data.in_chans, train.drop_path)
        encoder = load_encoder(model_section.name, args, model_section.checkpoint)
        self.resolved_model = resolved_encoder_config(model_section.name, args, model_section.checkpoint)
        backbone = build_dense_backbone(
            encoder, task_type.tag, model_section.window, model_section.global_blocks, model_section.feature_blocks
        )
        self.model = self.task.build_model(backbone).to(self.dist.device)
        if train.strategy == "fsdp":
            raise MimkitError(
                "train.strategy=fsdp is for pretraining and fine-tuning; train detection and segmentation with "
                "train.strategy=ddp (train.activation_checkpointing=true saves memory there)"
            )
        self.parallel = parallelize(
            self.model, self.dist, train.strategy, train.precision, train.activation_checkpointing
        )

        micro_batch = train.batch_size * self.dist.world_size
        global_batch = micro_batch * train.accum_steps
        train_set = self.task.train_set
        self.steps_per_epoch = len(train_set) // global_batch
        if self.steps_per_epoch < 1:
            raise MimkitError(
                f"{len(train_set)} training images are fewer than one step's {global_batch}; lower train.batch_size "
                "or train.accum_steps"
            )
        self.sampler = StepSampler(  # in micro-batches: one optimizer step reads accum_steps of them
            len(train_set),
            micro_batch,
            self.steps_per_epoch * train.accum_steps,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=train.seed,
        )
        self.loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=train.batch_size,
            sampler=self.sampler,
            num_workers=data.num_workers,
            collate_fn=self.task.collate_train,
            pin_memory=self.dist.device.type == "cuda",
            generator=torch.Generator(),  # see mimkit.data.batch_loader: keeps the global RNG stream resumable
            persistent_workers=data.num_workers > 0,  # items are seeded by key, so workers carry no state; keeping
            # them saves re-forking at every epoch (8 s an epoch with 8 workers on the H200 demo)
        )

        optim = config.optim
        groups = layer_decay_param_groups(self.model, optim.weight_decay, optim.layer_decay)
        self.optimizer = adamw(groups, lr=optim.lr, betas=optim.betas)
        self.total_steps = train.iterations or train.epochs * self.steps_per_epoch
        self.scheduler = dense_scheduler(
            self.optimizer,
            optim.schedule,
            self.total_steps,
            optim.warmup_steps,
            optim.min_lr,
            optim.poly_power,
            optim.step_at,
        )
        self.geometry = RunGeometry(global_batch, self.steps_per_epoch)
        self.position = TrainPosition()
        self.last_metrics: dict[str, Any] = {}
        self.precision = Precision(train.precision, self.dist.device)
        if self.session.resuming:
            stored, self.position = self.session.restore(self.model, self.optimizer, self.geometry, self.precision)
            self.last_metrics = stored.get("last_eval") or {}

    def _accumulate(self, batch: Any, micro: int) -> dict[str, torch.Tensor]:
        """Forward and backward of micro-batch ``micro`` of the current step (gradients synchronized across
        processes on the last one); returns its detached loss and loss parts."""
        accum = self.config.train.accum_steps
        with self.parallel.gradient_sync(micro == accum - 1):
            with self.precision.autocast():
                loss, parts = self.task.loss(self.parallel.module, batch)
            self.precision.backward(loss / accum)
        return {"loss": loss.detach().float(), **{k: v.detach().float() for k, v in parts.items()}}

    def _apply_update(self, sums: StepLosses, step: int) -> dict[str, float]:
        """The step's losses averaged over micro-batches and processes; a non-finite loss stops the run before the
        optimizer applies it."""
        losses = sums.mean(self.config.train.accum_steps)
        if not math.isfinite(losses["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"loss is {losses['loss']} at step {step + 1}; stopping without applying it. {self.session.last_good()}"
            )
        self.precision.step(self.model, self.optimizer, self.scheduler, step, self.config.optim.clip_grad)
        return losses

    def evaluate(self) -> tuple[dict[str, Any], Path | None]:
        """The task's metrics on the validation set (the same on every process) and the picture written."""
        self.model.eval()
        picture = None
        images = self.config.train.visualize_images
        if images and self.dist.is_main:
            picture = self.output / "pictures" / f"step_{self.position.step:08d}.png"
        with self.precision.autocast():
            metrics = self.task.evaluate(self.model, picture, images)
        self.model.train()
        return metrics, picture

    def describe(self) -> list[str]:
        config, train = self.config, self.config.train
        weights = config.model.checkpoint or "a random init"
        return [
            f"{self.task.tag} with {config.model.name} from {weights}",
            *self.task.describe(),
            f"batch:      {self.geometry.images_per_step} images per step ({train.batch_size} per process"
            f"{f' x {train.accum_steps} accumulated' if train.accum_steps > 1 else ''}), lr "
            f"{config.optim.lr:.3g} ({config.optim.schedule}, {config.optim.warmup_steps} warm-up steps, layer decay "
            f"{config.optim.layer_decay:g})",
            *self.session.summary(self.model, self.steps_per_epoch, self.total_steps),
        ]

    def _save(self) -> Path:
        record = {
            **to_dict(self.config),
            "resolved_model": self.resolved_model,
            "last_eval": self.last_metrics,
            **self.task.record(),
        }
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

    def _validate(self, epoch: int, summary: DenseSummary, metrics: MetricsLog, progress: ProgressDisplay) -> None:
        results, picture = self.evaluate()
        self.last_metrics = {"step": self.position.step, **results}
        scalars = {k: v for k, v in results.items() if isinstance(v, float) and math.isfinite(v)}
        record = {"step": self.position.step, "epoch": epoch, **scalars}
        metrics.write(record)
        if self.dist.is_main:
            text = json.dumps(self.last_metrics, indent=2, allow_nan=False) + "\n"
            atomic_write(self.output / EVAL_FILE, text.encode())
        summary.metrics, summary.picture = self.last_metrics, picture
        progress.message(f"step {self.position.step}: {self.task.headline(results)}")
        self.callbacks.eval(self, record)

    def run(self) -> DenseSummary:
        train = self.config.train
        start = time.perf_counter()
        summary = DenseSummary(output=self.output, metrics=self.last_metrics)
        stop_at = self.session.stop_at(self.total_steps)
        if self.session.finished(self.position.step, stop_at, self.total_steps):
            summary.steps = self.position.step
            self.callbacks.run_end(self, summary)
            return summary
        with self.session.records(self.position.step, stop_at, train.log_every, self.describe()) as (
            metrics,
            progress,
        ):
            self.model.train()
            timer = StepTimer(self.dist.device)
            while self.position.step < stop_at and not self.should_stop:
                epoch = self.position.epoch
                self.sampler.set_position(epoch, self.position.step_in_epoch * train.accum_steps)
                steps_before = self.position.step
                window_start = time.perf_counter()
                micro, sums = 0, StepLosses()
                for batch in timer.batches(self.loader):
                    sums.add(self._accumulate(batch, micro))
                    micro += 1
                    if micro < train.accum_steps:
                        continue
                    losses = self._apply_update(sums, self.position.step)
                    micro = 0
                    epoch_ended = advance(self.position, self.steps_per_epoch)
                    summary.last_loss = losses["loss"]
                    lr = max(group["lr"] for group in self.optimizer.param_groups)
                    now = time.perf_counter()
                    speed = self.geometry.images_per_step / max(now - window_start, 1e-9)
                    window_start = now
                    record = {"step": self.position.step, "epoch": epoch, **losses, "lr": lr}
                    record = report_step(metrics, progress, timer, self.precision, record, speed)
                    self.callbacks.step(self, record)
                    step = self.position.step
                    stopping = step >= stop_at or self.should_stop
                    evaluating = stopping or (train.eval_every and step % train.eval_every == 0)
                    if evaluating:
                        self._validate(epoch, summary, metrics, progress)
                    periodic = train.checkpoint_every and step % train.checkpoint_every == 0
                    if evaluating or epoch_ended or periodic:
                        summary.checkpoint = self._save()
                    if epoch_ended:
                        self.callbacks.epoch_end(self, epoch, record)
                    if epoch_ended or stopping or self.should_stop:
                        break
                check_epoch_progress(steps_before, self.position, self.steps_per_epoch)
        summary.steps = self.position.step
        summary.seconds = time.perf_counter() - start
        self.callbacks.run_end(self, summary)
        return summary
