"""Callbacks (``mimkit.Callback``): the pretraining, transfer and dense loops call them at their events, in order,
with the step's or the validation's record; a callback that sets ``trainer.should_stop`` ends the run cleanly with a
checkpoint that a resume continues exactly, also under torchrun where only the main process runs callbacks (tiny
runs, seconds each)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import mimkit
from mimkit.cli import main
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import Pretrainer
from mimkit.errors import MimkitError
from tests.conftest import needs_fashion_mnist, tiny_overrides


class Recorder(mimkit.Callback):
    """Writes down every event; stops the run after step ``stop_at`` where given."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def on_step(self, trainer, record):
        self.events.append(("step", record["step"], record["loss"], "data_s" in record and "images_per_s" in record))
        if record["step"] == self.stop_at:
            trainer.should_stop = True

    def on_epoch_end(self, trainer, epoch, record):
        self.events.append(("epoch_end", epoch, record["step"], record.get("val_top1") is not None))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", Path(path).name, trainer.position.step))

    def on_eval(self, trainer, record):
        self.events.append(("eval", record["step"], sorted(record)))

    def on_run_end(self, trainer, summary):
        self.events.append(("run_end", summary.steps))


def _losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_callbacks_fire_in_order_and_an_early_stop_resumes_exactly(tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    recorder = Recorder()
    summary = Pretrainer(load_pretrain_config(None, tiny_overrides(whole)), callbacks=[recorder]).run()
    losses = _losses(whole)
    steps = [("step", s, losses[s - 1], True) for s in range(1, 9)]
    assert recorder.events == [
        *steps[:4],
        ("checkpoint", "last.safetensors", 4),
        ("epoch_end", 0, 4, False),
        *steps[4:],
        ("checkpoint", "last.safetensors", 8),
        ("epoch_end", 1, 8, False),
        ("run_end", 8),
    ]
    assert summary.steps == 8

    stopper = Recorder(stop_at=3)
    summary = Pretrainer(load_pretrain_config(None, tiny_overrides(stopped)), callbacks=[stopper]).run()
    assert summary.steps == 3 and stopper.events[-2:] == [("checkpoint", "last.safetensors", 3), ("run_end", 3)]
    checkpoint = load_checkpoint(stopped / "checkpoints" / "last.safetensors")
    assert (checkpoint.position.step, checkpoint.position.step_in_epoch) == (3, 3)
    assert (stopped / "reconstructions" / "epoch_0000_step_00000003.png").is_file()
    assert main(["pretrain", "--output", str(stopped), "--resume"]) == 0
    assert _losses(stopped) == losses


def test_transfer_callbacks_see_validation_and_an_early_stop_validates_and_saves(tmp_path):
    from mimkit.eval.config import load_transfer_config
    from mimkit.eval.transfer import TransferTrainer
    from tests.transfer_files import TINY_RGB_ENCODER, write_labelled_images

    data = write_labelled_images(tmp_path / "data", per_class=8, val_per_class=4)
    overrides = [
        *data,
        *TINY_RGB_ENCODER,
        "train.batch_size=4",
        "train.epochs=2",
        f"output={tmp_path / 'probe'}",
    ]
    recorder = Recorder(stop_at=6)
    summary = TransferTrainer(load_transfer_config("linprobe", None, overrides), callbacks=[recorder]).run()
    assert summary.steps == 6
    scores = ["epoch", "step", "val_top1", "val_top5"]
    events = recorder.events
    assert [e[1] for e in events if e[0] == "step"] == list(range(1, 7))
    assert events[4] == ("checkpoint", "best.safetensors", 4)  # the first validation is the best so far
    assert [e for e in events if e[0] != "step" and e[1] != "best.safetensors"] == [
        ("eval", 4, scores),
        ("checkpoint", "last.safetensors", 4),
        ("epoch_end", 0, 4, True),
        ("eval", 6, scores),  # the stop validates, as train.max_steps does
        ("checkpoint", "last.safetensors", 6),
        ("run_end", 6),
    ]
    assert load_checkpoint(tmp_path / "probe" / "checkpoints" / "last.safetensors").position.step == 6


def test_callbacks_must_be_callback_instances(tiny_config):
    with pytest.raises(MimkitError, match="callbacks must be mimkit.Callback instances, got function"):
        Pretrainer(tiny_config(), callbacks=[lambda trainer, record: None])


STOP_SCRIPT = """
import sys
import mimkit
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import Pretrainer

class StopAtThree(mimkit.Callback):
    def on_step(self, trainer, record):
        if record["step"] == 3:
            trainer.should_stop = True

trainer = Pretrainer(load_pretrain_config(None, sys.argv[2:]), callbacks=[StopAtThree()])
print(f"rank {trainer.dist.rank} stopped at {trainer.run().steps}", flush=True)
"""


def test_an_early_stop_on_the_main_process_stops_every_process(tmp_path):
    """Only rank 0 runs the callback; rank 1 learns of the stop (else it would wait in its next all-reduce)."""
    from tests.test_distributed import _run_two_processes

    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    output = tmp_path / "two"
    printed = _run_two_processes("pretrain", *tiny_overrides(output, "train.batch_size=4"), program=(str(script),))
    # The two processes share one pipe, so their lines may interleave: read the reports wherever they are.
    assert sorted(re.findall(r"rank (\d) stopped at (\d+)", printed)) == [("0", "3"), ("1", "3")]
    assert load_checkpoint(output / "checkpoints" / "last.safetensors").position.step == 3


class StopAtTheFirstEvaluation(Recorder):
    def on_eval(self, trainer, record):
        super().on_eval(trainer, record)
        trainer.should_stop = True


@needs_fashion_mnist
def test_a_segmentation_run_stops_after_the_evaluation_a_callback_saw_and_resumes(tmp_path):
    from mimkit.dense.config import load_segment_config
    from mimkit.dense.demo_set import write_dense_demo
    from mimkit.dense.segmentation_task import SegmentationTask
    from mimkit.dense.trainer import DenseTrainer

    demo = write_dense_demo(tmp_path / "demo", train_images=4, val_images=2, canvas=64)
    output = tmp_path / "segment"
    overrides = [
        f"data.path={demo.ade_root}",
        f"data.num_classes={demo.ade_num_classes}",
        "data.img_size=64",
        "data.num_workers=0",
        "train.batch_size=2",
        "train.visualize_images=0",
        "train.iterations=6",
        "train.eval_every=2",
        f"output={output}",
    ]
    recorder = StopAtTheFirstEvaluation()
    summary = DenseTrainer(SegmentationTask, load_segment_config(None, overrides), callbacks=[recorder]).run()
    assert summary.steps == 2
    assert [e[:2] for e in recorder.events] == [
        ("step", 1),
        ("step", 2),
        ("eval", 2),
        ("checkpoint", "last.safetensors"),
        ("epoch_end", 0),
        ("run_end", 2),
    ]
    assert "mIoU" in recorder.events[2][2]
    assert main(["segment", "--output", str(output), "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4, 5, 6, 6]  # each step's record, and an evaluation's at steps 2, 4 and 6
