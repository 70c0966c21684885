"""Fine-tuning and linear probing: one supervised loop for both protocols (MAE appendix A.2 and A.3).

Fine-tuning trains the whole encoder with layer-wise lr decay, drop path, RandAugment, Mixup/CutMix and label
smoothing; probing trains BatchNorm + a linear head on a frozen encoder. Top-1/top-5 on the validation images
after every epoch; ``best.safetensors`` and ``last.safetensors`` hold the classifier.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import Lars
from torch.nn.parallel import DistributedDataParallel

from mimkit.config_schema import to_dict
from mimkit.data import AugmentedDataset, StepSampler, batch_loader
from mimkit.engine.checkpoint import TrainPosition, save_checkpoint
from mimkit.engine.distributed import barrier, init_distributed, mean_across_processes, sum_across_processes
from mimkit.engine.metrics import MetricsLog, ProgressDisplay
from mimkit.engine.optim import adamw, build_scheduler, effective_lr
from mimkit.errors import MimkitError, NonFiniteLossError
from mimkit.eval.classifier import Classifier, layer_decay_param_groups
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
    """Runs a :class:`TransferConfig`; ``run()`` returns a :class:`TransferSummary`."""

    def __init__(self, config: TransferConfig) -> None:
        self.config = config
        train, data = config.train, config.data
        self.dist = init_distributed(train.device)
        torch.manual_seed(train.seed + self.dist.rank)
        self.output = Path(config.output)
        self.train_source, self.val_source, self.num_classes = labelled_sources(data)

        args = {**config.model.args, **encoder_data_args(data)}
        if config.protocol == "finetune":
            args.setdefault("drop_path_rate", train.drop_path)
        encoder = load_encoder(config.model.name, args, config.model.checkpoint)
        self.resolved_model = resolved_encoder_config(config.model.name, args, config.model.checkpoint)
        self.model = Classifier(encoder, self.num_classes, linear_probe=config.protocol == "linprobe")
        self.model.to(self.dist.device)

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
        self.ddp = None
        if self.dist.world_size > 1:  # a probe's frozen encoder has no gradients: DDP averages the head's
            device_ids = [self.dist.device] if self.dist.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)

    def _train_step(self, batch: dict, step: int) -> float:
        train = self.config.train
        images = batch["image"].to(self.dist.device, non_blocking=True)
        targets = batch["label"].to(self.dist.device, non_blocking=True)
        if self.mixup is not None:
            # Clips (B, C, T, H, W) are mixed as (B, C*T, H, W) images: one CutMix box for all frames.
            mixed, targets = self.mixup(images.flatten(1, -3), targets)
            images = mixed.view_as(images)
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
        with autocast:
            loss = self.criterion((self.ddp or self.model)(images), targets)
        loss_value = mean_across_processes(loss.detach().float()).item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at step {step + 1}; stopping without applying it")
        loss.backward()
        self.scheduler.step_update(step)
        if self.config.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Top-1 and top-5 accuracy (in %) on the validation images, over all processes."""
        self.model.eval()
        counts = torch.zeros(3, device=self.dist.device)
        top = min(5, self.num_classes)
        for batch in self.val_loader:
            logits = self.model(batch["image"].to(self.dist.device)).float()
            labels = batch["label"].to(self.dist.device)
            ranked = logits.topk(top, dim=1).indices
            counts[0] += (ranked[:, 0] == labels).sum()
            counts[1] += (ranked == labels[:, None]).any(dim=1).sum()
            counts[2] += len(labels)
        counts = sum_across_processes(counts)
        return (100 * counts[0] / counts[2]).item(), (100 * counts[1] / counts[2]).item()

    def _save(self, name: str, position: TrainPosition) -> Path:
        path = self.output / "checkpoints" / f"{name}.safetensors"
        record = {**to_dict(self.config), "num_classes": self.num_classes, "resolved_model": self.resolved_model}
        if self.dist.is_main:
            save_checkpoint(path, self.model, record, position, with_rng=False)
        barrier()
        return path

    def run(self) -> TransferSummary:
        train = self.config.train
        main = self.dist.is_main
        start = time.perf_counter()
        summary = TransferSummary(output=self.output)
        metrics = MetricsLog(self.output, main)
        stop_at = min(self.total_steps, train.max_steps or self.total_steps)
        progress = ProgressDisplay(stop_at, 0, main, train.log_every, label=self.config.protocol)
        step = 0
        try:
            for epoch in range(train.epochs):
                self.sampler.set_position(epoch, 0)
                self.model.train()
                window_start = time.perf_counter()
                for batch in self.loader:
                    loss = self._train_step(batch, step)
                    step += 1
                    lr = max(group["lr"] for group in self.optimizer.param_groups)
                    now = time.perf_counter()
                    speed = train.batch_size * self.dist.world_size / max(now - window_start, 1e-9)
                    window_start = now
                    metrics.write({"step": step, "epoch": epoch, "loss": loss, "lr": lr})
                    progress.update(step, epoch, loss, lr, speed)
                    if step >= stop_at:
                        break
                last = step >= stop_at or epoch == train.epochs - 1
                if not last and (train.eval_every == 0 or (epoch + 1) % train.eval_every):
                    continue
                top1, top5 = self.evaluate()
                summary.last_top1, summary.last_top5 = top1, top5
                position = TrainPosition(step=step, epoch=epoch + 1)
                summary.last_checkpoint = self._save("last", position)
                if top1 >= summary.best_top1:
                    summary.best_top1 = top1
                    summary.best_checkpoint = self._save("best", position)
                record = {"step": step, "epoch": epoch, "val_top1": top1, "val_top5": top5}
                metrics.write(record)
                summary.history.append(record)
                progress.message(
                    f"epoch {epoch}: val top-1 {top1:.2f}%  top-5 {top5:.2f}%  (best {summary.best_top1:.2f}%)"
                )
                if step >= stop_at:
                    break
        finally:
            progress.close()
            metrics.close()
        summary.steps = step
        summary.seconds = time.perf_counter() - start
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
