"""Fine-tuning and linear probing: one supervised loop for both protocols (MAE appendix A.2 and A.3).

Fine-tuning trains the whole encoder with layer-wise lr decay, drop path, RandAugment, Mixup/CutMix and label
smoothing; probing trains BatchNorm + a linear head on a frozen encoder. Top-1/top-5 on the validation images
after every epoch; ``best.safetensors`` and ``last.safetensors`` hold the classifier.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import Lars

from mimkit.config_schema import to_dict
from mimkit.data import AugmentedDataset, StepSampler, batch_loader
from mimkit.engine.callbacks import Callback, CallbackList
from mimkit.engine.checkpoint import TrainPosition
from mimkit.engine.distributed import init_distributed, mean_across_processes, sum_across_processes
from mimkit.engine.metrics import MetricsLog, ProgressDisplay
from mimkit.engine.optim import adamw, build_scheduler, effective_lr, layer_decay_param_groups
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
from mimkit.eval.classifier import Classifier
from mimkit.eval.config import TransferConfig
from mimkit.eval.data import encoder_data_args, eval_transform_for, labelled_sources, train_transform
from mimkit.eval.loading import load_encoder, resolved_encoder_config


@dataclass
class TransferSummary:
    output: Path
    best_top1: float = 0.0
    last_top1: float = 0.0
    last_top5: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    history: list[dict] = field(default_factory=list)


def build_optimizer(model: Classifier, config: TransferConfig, lr: float) -> torch.optim.Optimizer:
    """Fine-tuning: every parameter, grouped for layer-wise lr decay. Probing: the head alone."""
    optim = config.optim
    if config.protocol == "finetune":
        groups = layer_decay_param_groups(model, optim.weight_decay, optim.layer_decay)
    else:
        groups = [
            {"params": [p for p in model.head.parameters() if p.requires_grad], "weight_decay": optim.weight_decay}
        ]
    if optim.name == "adamw":
        return adamw(groups, lr=lr, betas=optim.betas)
    if optim.name == "lars":
        return Lars(groups, lr=lr, momentum=optim.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum)


class TransferTrainer:
    """Runs a :class:`TransferConfig`; ``run()`` returns a :class:`TransferSummary`.

    ``resume`` (``'auto'`` or a checkpoint path), ``overwrite`` and ``allow_changes``: as for pretraining
    (:class:`~mimkit.engine.run_session.RunSession`); a resumed run continues exactly, mid-epoch included.
    ``dataset`` and ``val_dataset``: the ``(image, label)`` datasets of a ``data.source: python`` run
    (:func:`mimkit.finetune`); ``callbacks``: :class:`~mimkit.engine.callbacks.Callback` instances called at the run's
    events.
    """

    def __init__(
        self,
        config: TransferConfig,
        resume: str | Path | None = None,
        overwrite: bool = False,
        allow_changes: bool = False,
        *,
        dataset: object | None = None,
        val_dataset: object | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        train, data = config.train, config.data
        self.dist = init_distributed(train.device)
        self.callbacks = CallbackList(callbacks, self.dist.is_main, self.dist.device)
        self.should_stop = False
        """Set by a callback to end the run after the current step (see :mod:`mimkit.engine.callbacks`)."""
        self.session = RunSession(config, self.dist, resume, overwrite, allow_changes, tag=config.protocol)
        seed_global_generators(train.seed + self.dist.rank)
        self.output = Path(config.output)
        self.train_source, self.val_source, self.num_classes = labelled_sources(data, dataset, val_dataset)

        args = {**config.model.args, **encoder_data_args(data)}
        if config.protocol == "finetune":
            args.setdefault("drop_path_rate", train.drop_path)
        encoder = load_encoder(config.model.name, args, config.model.checkpoint)
        self.resolved_model = resolved_encoder_config(config.model.name, args, config.model.checkpoint)
        self.model = Classifier(encoder, self.num_classes, linear_probe=config.protocol == "linprobe")
        self.model.to(self.dist.device)
        # a probe's frozen encoder has no gradients: DDP averages the head's
        self.parallel = parallelize(
            self.model, self.dist, train.strategy, train.precision, train.activation_checkpointing
        )

        global_batch = train.batch_size * self.dist.world_size
        self.steps_per_epoch = len(self.train_source) // global_batch
        if self.steps_per_epoch < 1:
            raise MimkitError(f"{len(self.train_source)} training images are fewer than one batch of {global_batch}")
        self.sampler = StepSampler(
            len(self.train_source),
            global_batch,
            self.steps_per_epoch,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=train.seed,
        )
        dataset = AugmentedDataset(self.train_source, train_transform(data, config.augment), seed=train.seed)
        self.loader = batch_loader(dataset, train.batch_size, self.sampler, data.num_workers, self.dist.device)
        val_dataset = AugmentedDataset(self.val_source, eval_transform_for(data))
        val_indices = list(range(self.dist.rank, len(self.val_source), self.dist.world_size))
        self.val_loader = batch_loader(
            val_dataset, train.eval_batch_size, val_indices, data.num_workers, self.dist.device
        )
        self.val_batches_max = math.ceil(math.ceil(len(self.val_source) / self.dist.world_size) / train.eval_batch_size)

        augment = config.augment
        self.mixup = None
        if augment.mixup > 0 or augment.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=augment.mixup,
                cutmix_alpha=augment.cutmix,
                label_smoothing=augment.label_smoothing,
                num_classes=self.num_classes,
            )
            self.criterion = SoftTargetCrossEntropy()
        elif augment.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(augment.label_smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()

        self.lr = effective_lr(config.optim.base_lr, global_batch)
        self.optimizer = build_optimizer(self.model, config, self.lr)
        self.total_steps = self.steps_per_epoch * train.epochs
        warmup = round(config.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.optim.min_lr)
        self.geometry = RunGeometry(global_batch, self.steps_per_epoch)
        self.position = TrainPosition()
        self.best_top1 = 0.0
        self.precision = Precision(train.precision, self.dist.device)
        if self.session.resuming:
            stored, self.position = self.session.restore(self.model, self.optimizer, self.geometry, self.precision)
            self.best_top1 = stored.get("best_top1", 0.0)

    def _train_step(self, batch: dict, step: int) -> float:
        images = batch["image"].to(self.dist.device, non_blocking=True)
        targets = batch["label"].to(self.dist.device, non_blocking=True)
        if self.mixup is not None:
            # Clips (B, C, T, H, W) are mixed as (B, C*T, H, W) images: one CutMix box for all frames.
            mixed, targets = self.mixup(images.flatten(1, -3), targets)
            images = mixed.view_as(images)
        with self.precision.autocast():
            loss = self.criterion(self.parallel.module(images), targets)
        loss_value = mean_across_processes(loss.detach().float()).item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at step {step + 1}; stopping without applying it")
        self.precision.backward(loss)
        self.precision.step(self.model, self.optimizer, self.scheduler, step, self.config.optim.clip_grad)
        return loss_value

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Top-1 and top-5 accuracy (in %) on the validation images, over all processes."""
        self.model.eval()
        counts = torch.zeros(3, device=self.dist.device)
        top = min(5, self.num_classes)
        batches, images = 0, None
        for batch in self.val_loader:
            images = batch["image"].to(self.dist.device)
            batches += 1
            logits = self.model(images).float()
            labels = batch["label"].to(self.dist.device)
            ranked = logits.topk(top, dim=1).indices
            counts[0] += (ranked[:, 0] == labels).sum()
            counts[1] += (ranked == labels[:, None]).any(dim=1).sum()
            counts[2] += len(labels)
        if self.parallel.sharded:  # a sharded forward is collective: every process runs as many as the busiest
            for _ in range(self.val_batches_max - batches):
                self.model(images)
        counts = sum_across_processes(counts)
        return (100 * counts[0] / counts[2]).item(), (100 * counts[1] / counts[2]).item()

    def describe(self) -> list[str]:
        """The start-up summary: encoder and weights, data, batch and learning rate, device, schedule, output."""
        config, train = self.config, self.config.train
        weights = config.model.checkpoint or "a random init"
        return [
            f"{config.protocol} {config.model.name} from {weights}",
            f"data:       {len(self.train_source)} training and {len(self.val_source)} validation images, "
            f"{self.num_classes} classes ({config.data.source}), {config.data.img_size} px",
            f"batch:      {self.geometry.images_per_step} images per step ({train.batch_size} per process), lr "
            f"{self.lr:.3g} (base_lr {config.optim.base_lr:g} x {self.geometry.images_per_step} / 256)",
            *self.session.summary(self.model, self.steps_per_epoch, self.total_steps),
        ]

    def _save(self, name: str) -> Path:
        """``last`` holds everything a resume needs (optimizer, RNG states); ``best`` the classifier alone."""
        record = {
            **to_dict(self.config),
            "num_classes": self.num_classes,
            "class_names": self.train_source.class_names,
            "best_top1": self.best_top1,
            "resolved_model": self.resolved_model,
        }
        last = name == "last"
        path = self.session.save(
            name,
            self.model,
            record,
            self.position,
            self.geometry,
            self.optimizer if last else None,
            keep=self.config.train.keep_checkpoints if last else 0,
            scaler=self.precision.state() if last else None,
        )
        self.callbacks.checkpoint(self, path)
        return path

    def _validate(
        self, epoch: int, summary: TransferSummary, metrics: MetricsLog, progress: ProgressDisplay
    ) -> dict[str, float]:
        """Score the validation images, record the scores and write ``best`` where top-1 is the best so far."""
        top1, top5 = self.evaluate()
        summary.last_top1, summary.last_top5 = top1, top5
        record = {"step": self.position.step, "epoch": epoch, "val_top1": top1, "val_top5": top5}
        metrics.write(record)
        summary.history.append(record)
        if top1 >= self.best_top1:
            self.best_top1 = top1
            summary.best_checkpoint = self._save("best")
        summary.best_top1 = self.best_top1
        progress.message(f"epoch {epoch}: val top-1 {top1:.2f}%  top-5 {top5:.2f}%  (best {self.best_top1:.2f}%)")
        self.callbacks.eval(self, record)
        return record

    def run(self) -> TransferSummary:
        train = self.config.train
        start = time.perf_counter()
        best = self.session.folder.checkpoints / "best.safetensors"
        earlier_best = best if self.session.resuming and best.is_file() else None
        summary = TransferSummary(output=self.output, best_top1=self.best_top1, best_checkpoint=earlier_best)
        stop_at = self.session.stop_at(self.total_steps)
        if self.session.finished(self.position.step, stop_at, self.total_steps):
            summary.steps = self.position.step
            self.callbacks.run_end(self, summary)
            return summary
        with self.session.records(self.position.step, stop_at, train.log_every, self.describe()) as (
            metrics,
            progress,
        ):
            timer = StepTimer(self.dist.device)
            while self.position.step < stop_at and not self.should_stop:
                epoch = self.position.epoch
                self.sampler.set_position(epoch, self.position.step_in_epoch)
                self.model.train()
                steps_before = self.position.step
                window_start = time.perf_counter()
                for batch in timer.batches(self.loader):
                    loss = self._train_step(batch, self.position.step)
                    epoch_ended = advance(self.position, self.steps_per_epoch)
                    lr = max(group["lr"] for group in self.optimizer.param_groups)
                    now = time.perf_counter()
                    speed = self.geometry.images_per_step / max(now - window_start, 1e-9)
                    window_start = now
                    record = {"step": self.position.step, "epoch": epoch, "loss": loss, "lr": lr}
                    record = report_step(metrics, progress, timer, self.precision, record, speed)
                    self.callbacks.step(self, record)
                    if epoch_ended or self.position.step >= stop_at or self.should_stop:
                        break
                    if train.checkpoint_every and self.position.step % train.checkpoint_every == 0:
                        summary.last_checkpoint = self._save("last")
                check_epoch_progress(steps_before, self.position, self.steps_per_epoch)
                epoch_done = self.position.epoch > epoch
                stopping = self.position.step >= stop_at or self.should_stop
                scores = {}
                if stopping or (epoch_done and train.eval_every and (epoch + 1) % train.eval_every == 0):
                    scores = self._validate(epoch, summary, metrics, progress)
                if epoch_done or stopping:
                    summary.last_checkpoint = self._save("last")
                if epoch_done:
                    self.callbacks.epoch_end(self, epoch, {**record, **scores})
        summary.steps = self.position.step
        summary.seconds = time.perf_counter() - start
        self.callbacks.run_end(self, summary)
        return summary


def finetune(config: TransferConfig) -> TransferSummary:
    """Fine-tune a pretrained encoder as ``config`` says (``config.protocol`` must be ``finetune``)."""
    if config.protocol != "finetune":
        raise MimkitError(f"finetune() needs protocol 'finetune', got '{config.protocol}'")
    return TransferTrainer(config).run()


def linprobe(config: TransferConfig) -> TransferSummary:
    """Train a linear probe on a frozen encoder (``config.protocol`` must be ``linprobe``)."""
    if config.protocol != "linprobe":
        raise MimkitError(f"linprobe() needs protocol 'linprobe', got '{config.protocol}'")
    return TransferTrainer(config).run()
