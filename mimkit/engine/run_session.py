"""What pretraining and fine-tuning share around their training loops: the output folder's rules and lock,
resuming a checkpoint, the run's records, and the checkpoints it writes and keeps."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import TrainPosition, load_checkpoint, restore_rng, save_state_checkpoint
from mimkit.engine.checkpoint_checks import load_model_state, load_optimizer_state
from mimkit.engine.distributed import DistInfo, barrier
from mimkit.engine.metrics import MetricsLog, ProgressDisplay
from mimkit.engine.precision import Precision
from mimkit.engine.resume_config import RunGeometry, check_resume_changes, fit_position, resume_checkpoint
from mimkit.engine.retention import keep_checkpoint
from mimkit.engine.run_folder import RunFolder
from mimkit.engine.sharded_checkpoint import is_sharded, load_sharded, read_sharded_record, save_sharded
from mimkit.engine.step_timer import StepTimer
from mimkit.engine.strategy import full_state_dict, is_sharded_model
from mimkit.engine.trackers import check_trackers_installed
from mimkit.errors import CheckpointError, MimkitError, NonFiniteError


class RunSession:
    """One invocation of a training run writing to ``config.output``.

    ``resume``: ``None`` (a new run; refused where the folder holds one unless ``overwrite``), ``'auto'`` (the
    folder's ``last.safetensors``, which must exist) or a checkpoint path. ``allow_changes`` lets a resume change
    what the run is (see :mod:`mimkit.engine.resume_config`). ``tag`` names the run's TensorBoard scalars and
    progress label (``pretrain``, ``finetune``, ``linprobe``).
    """

    def __init__(
        self,
        config: Any,
        dist: DistInfo,
        resume: str | Path | None,
        overwrite: bool,
        allow_changes: bool,
        tag: str,
    ) -> None:
        self.config = config
        self.dist = dist
        self.folder = RunFolder(config.output)
        self.overwrite = overwrite
        self.allow_changes = allow_changes
        self.tag = tag
        self.resume_path = resume_checkpoint(self.folder.path, resume) if resume is not None else None
        check_trackers_installed(config.train.trackers)
        if dist.is_main:
            self.folder.check_start(self.resume_path, overwrite)
        self.notes: list[str] = []
        """Lines for the run's start (what a resume changed), printed and logged by :meth:`records`."""

    @property
    def resuming(self) -> bool:
        return self.resume_path is not None

    def restore(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, geometry: RunGeometry, precision: Precision
    ) -> tuple[dict[str, Any], TrainPosition]:
        """Load the checkpoint to resume into ``model``, ``optimizer`` and ``precision`` (an fp16 run's scaler) and
        restore the RNG states, after checking that its config and position fit this run; returns the checkpoint's
        config and the position to continue at. A sharded checkpoint (``last.dcp``) resumes an FSDP run, a single
        file any other."""
        path = self.resume_path
        sharded = is_sharded(path)
        if sharded != is_sharded_model(model):
            kind, strategy = ("a sharded", "fsdp") if sharded else ("a single-file", "ddp")
            raise CheckpointError(
                f"{path} is {kind} checkpoint, which resumes with train.strategy={strategy}; convert a sharded one "
                "with `mimkit convert-checkpoint` and start a new run from its weights to switch"
            )
        if sharded:
            checkpoint = None
            config, saved_position, scaler = read_sharded_record(path)
        else:
            checkpoint = load_checkpoint(path)
            config, saved_position, scaler = checkpoint.config, checkpoint.position, checkpoint.scaler
        changes = check_resume_changes(type(self.config), config, self.config, self.allow_changes, path)
        saved_name = config.get("model", {}).get("name")
        if saved_name != self.config.model.name:
            raise MimkitError(f"checkpoint {path} is for model '{saved_name}', not '{self.config.model.name}'")
        if checkpoint is not None and (checkpoint.optimizer is None or checkpoint.rng is None):
            raise CheckpointError(
                f"{path} holds no optimizer and RNG states (a best checkpoint, or one written by an older mimkit), so "
                "it cannot continue a run; start a new run from its weights instead"
            )
        position = fit_position(saved_position, config.get("run"), geometry, self.allow_changes, path)
        if checkpoint is None:
            rng = load_sharded(path, model, optimizer)
        else:
            load_model_state(model, checkpoint.model, path)
            load_optimizer_state(optimizer, checkpoint.optimizer, path)
            rng = checkpoint.rng
        restore_rng(rng)
        precision.load_state(scaler)
        self.notes.append(f"resuming {path} at step {position.step} (epoch {position.epoch})")
        if position != saved_position:
            self.notes.append(f"the run's steps changed: step {saved_position.step} is now step {position.step}")
        self.notes += [f"changed on resume: {change}" for change in changes]
        return config, position

    def stop_at(self, total_steps: int) -> int:
        """The step this invocation stops at: the end of the schedule or ``train.max_steps``."""
        return min(total_steps, self.config.train.max_steps or total_steps)

    def summary(self, model: torch.nn.Module, steps_per_epoch: int, total_steps: int) -> list[str]:
        """The start-up lines both trainers print about the model, where it runs, the schedule and the output."""
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        processes = f" x {self.dist.world_size} processes" if self.dist.world_size > 1 else ""
        stop_at = self.stop_at(total_steps)
        stop = f"; this invocation stops at step {stop_at} (train.max_steps)" if stop_at < total_steps else ""
        return [
            f"parameters: {total / 1e6:.2f} M ({trainable / 1e6:.2f} M trained); device {self.dist.device}"
            f"{processes}, {self.config.train.precision}",
            f"schedule:   {steps_per_epoch} steps per epoch, {total_steps} steps in total{stop}",
            f"output:     {self.folder.path}",
        ]

    def finished(self, step: int, stop_at: int, total_steps: int) -> bool:
        """A resumed run already at its stop point says so (and there is nothing to write)."""
        if not self.resuming or step < stop_at:
            return False
        if self.dist.is_main:
            reason = f"train.max_steps={stop_at}" if stop_at < total_steps else f"the end of its {total_steps} steps"
            print(f"{self.folder.path}: the run is at step {step}, {reason}: nothing to do")
        return True

    @contextmanager
    def records(
        self, step: int, stop_at: int, log_every: int, summary: list[str]
    ) -> Iterator[tuple[MetricsLog, ProgressDisplay]]:
        """Hold the run folder (main process: lock, refuse or clear an earlier run, remove stale temporary files,
        write ``config.yaml``) and its records while the loop runs; ``summary`` starts the log."""
        main = self.dist.is_main
        config = to_dict(self.config)
        with ExitStack() as stack:
            if main:
                stack.enter_context(self.folder.session(self.resume_path, self.overwrite, config))
            barrier()
            resume_step = step if self.resuming else None
            metrics = MetricsLog(self.folder.path, main, resume_step, self.tag, self.config.train.trackers, config)
            stack.push(lambda error_type, *_: metrics.close(failed=error_type is not None))
            progress = ProgressDisplay(stop_at, step, main, log_every, self.tag, self.folder.log_path)
            stack.callback(progress.close)
            removed = self.folder.removed_temporaries
            notes = [*summary, *self.notes, *metrics.notes]
            if removed:
                notes.append(f"removed {len(removed)} stale temporary file(s) of interrupted writes")
            for line in notes:
                progress.message(line)
            try:
                yield metrics, progress
            except MimkitError as err:
                progress.message(f"stopped: {err}")
                raise

    def save(
        self,
        name: str,
        model: torch.nn.Module,
        record: dict[str, Any],
        position: TrainPosition,
        geometry: RunGeometry,
        optimizer: torch.optim.Optimizer | None = None,
        keep: int = 0,
        scaler: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint ``checkpoints/<name>.safetensors`` (main process) with the run geometry in its record
        and, with ``optimizer`` (and an fp16 run's ``scaler`` state), everything a resume needs; keep the ``keep``
        latest as periodic copies. Every process calls it. An FSDP-sharded ``model`` with ``optimizer`` is written as
        a sharded checkpoint (``checkpoints/last.dcp``, by every process); without, gathered into the main process's
        single file."""
        full_record = {**record, "run": asdict(geometry)}
        sharded = is_sharded_model(model)
        path = self.folder.checkpoints / f"{name}.safetensors"
        try:
            if sharded and optimizer is not None:
                return save_sharded(self.folder.checkpoints, model, optimizer, full_record, position, keep, scaler)
            state = full_state_dict(model)
            if self.dist.is_main:
                optimizer_state = optimizer.state_dict() if optimizer is not None else None
                save_state_checkpoint(
                    path, state, full_record, position, optimizer_state, optimizer is not None, scaler
                )
                keep_checkpoint(path, position.step, keep)
        except NonFiniteError as err:
            where = f"by step {position.step}: {err}; stopping. {self.last_good()}"
            raise NonFiniteError(f"the weights or optimizer state became non-finite {where}") from err
        barrier()
        return path

    def last_good(self) -> str:
        """Where the run can be picked up: every checkpoint written is finite (``save_checkpoint`` refuses others)."""
        last = self.folder.last_sharded if self.config.train.strategy == "fsdp" else self.folder.last_checkpoint
        return f"The last good checkpoint is {last}" + ("" if last.exists() else " (none written yet)")


def seed_global_generators(seed: int) -> None:
    """Seed torch's, NumPy's and Python's global generators (timm's Mixup/CutMix draw from NumPy's), so a run
    starts alike in a fresh process and in one that ran something before."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def report_step(
    metrics: MetricsLog,
    progress: ProgressDisplay,
    timer: StepTimer,
    precision: Precision,
    record: dict[str, Any],
    images_per_s: float,
) -> dict[str, Any]:
    """Record a finished optimizer step (``record`` holds at least its step, epoch, loss and lr): its throughput,
    data and step times and, under fp16, the scaler's fields join it in the metrics log; the progress display shows
    it, with a line where the fp16 scaler skipped the update. Returns the record written."""
    step = record["step"]
    timing = timer.step_done(progress.log_point(step))
    full = {**record, "images_per_s": images_per_s, **timing, **precision.record()}
    metrics.write(full)
    progress.update(step, record["epoch"], record["loss"], record["lr"], images_per_s, timing)
    if note := precision.overflow_note(step):
        progress.message(note)
    return full


def advance(position: TrainPosition, steps_per_epoch: int) -> bool:
    """Count one optimizer step; at the end of an epoch the position moves to the start of the next at once, so
    no checkpoint ever records a step one past its epoch's end. Returns whether the epoch ended."""
    position.step += 1
    position.step_in_epoch += 1
    if position.step_in_epoch < steps_per_epoch:
        return False
    position.epoch += 1
    position.step_in_epoch = 0
    return True


def check_epoch_progress(steps_before: int, position: TrainPosition, steps_per_epoch: int) -> None:
    """A pass over an epoch's data that made no optimizer step would repeat forever: stop instead."""
    if position.step == steps_before:
        raise RuntimeError(
            f"epoch {position.epoch} gave no optimizer step from step {position.step_in_epoch} of {steps_per_epoch}: "
            "the data position does not fit the run"
        )
