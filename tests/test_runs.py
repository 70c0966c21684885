"""A run's folder and lifecycle through the command line: refusal, lock, resume rules, records, kept checkpoints,
fine-tuning resume, start-up summary and pictures (tiny model, seconds each)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimkit.cli import main
from mimkit.config_schema import ConfigError
from mimkit.data import SamplePhotos, StepSampler, eval_transform, load_readable
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import Pretrainer, pretrain
from mimkit.engine.run_folder import LOCK_NAME
from tests.conftest import tiny_overrides
from tests.transfer_files import TINY_RGB_ENCODER

PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  step \d+/\d+  epoch .* eta \d+:\d\d:\d\d$", re.M)


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _losses(output: Path) -> list[float]:
    return [r["loss"] for r in _records(output) if "loss" in r]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pretrain(output: Path, *extra: str) -> int:
    return main(["pretrain", *tiny_overrides(output, *extra)])


def _resume(output: Path, *extra: str) -> int:
    return main(["pretrain", "--output", str(output), "--resume", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_second_run_into_a_run_folder_is_refused_and_overwrite_starts_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=2") == 0
    before = _files(out)
    capsys.readouterr()
    assert _pretrain(out, "train.max_steps=2") == 2
    err = _one_error_line(capsys)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _files(out) == before
    (out / "notes.txt").write_text("mine")
    assert main(["pretrain", "--overwrite", *tiny_overrides(out, "train.max_steps=1")]) == 0
    assert [r["step"] for r in _records(out)] == [1]
    assert len(list((out / "tensorboard").iterdir())) == 1  # the old run's events are gone
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_in_use_is_refused_naming_the_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK_NAME, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("4242\n")
        holder.flush()
        assert main(["pretrain", "--overwrite", *tiny_overrides(out)]) == 2
    assert "in use by another mimkit run (PID 4242)" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert _resume(tmp_path / "empty") == 2
    assert "holds no checkpoint" in _one_error_line(capsys)
    assert not (tmp_path / "empty").exists()


def test_a_bare_resume_continues_the_stored_run_to_its_end(tmp_path):
    assert _pretrain(tmp_path / "whole") == 0
    assert _pretrain(tmp_path / "split", "train.max_steps=3") == 0
    assert _resume(tmp_path / "split") == 0  # no overrides: the checkpoint's config, without its stop point
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")


def test_resume_refuses_changes_to_the_run_unless_allowed(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=4") == 0
    capsys.readouterr()
    assert _resume(out, "train.batch_size=16", "data.img_size=32", "train.log_every=2") == 2
    err = _one_error_line(capsys)
    assert "data.img_size 64 -> 32" in err and "train.batch_size 8 -> 16" in err and "--allow-changes" in err
    assert "log_every" not in err
    assert _resume(out, "--allow-changes", "train.epochs=3", "train.log_every=2") == 0
    printed = capsys.readouterr().out
    assert "changed on resume: train.epochs 2 -> 3" in printed and "train.log_every 1 -> 2" in printed
    assert [r["step"] for r in _records(out)] == list(range(1, 13))


def test_a_finished_run_resumed_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out) == 0
    before = _files(out)
    capsys.readouterr()
    assert _resume(out) == 0
    assert "the run is at step 8, the end of its 8 steps: nothing to do" in capsys.readouterr().out
    assert _files(out) == before


@pytest.mark.parametrize("change", ["train.batch_size=16", "train.accum_steps=2", "data.samples_per_epoch=16"])
def test_a_mid_epoch_checkpoint_in_a_run_cut_otherwise_is_refused(tmp_path, capsys, change):
    """Before: the sampler yielded nothing past the epoch's end and the loop spun forever."""
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=3") == 0  # step 3 of 4 in epoch 0
    capsys.readouterr()
    assert _resume(out, "--allow-changes", change) == 2
    assert "cannot resume" in (err := _one_error_line(capsys)) and "mid-epoch" in err


def test_an_allowed_change_at_an_epoch_boundary_continues_at_that_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=4") == 0  # end of epoch 0 at 8 images per step
    assert _resume(out, "train.batch_size=16") == 2
    assert _resume(out, "--allow-changes", "train.batch_size=16") == 0  # 2 steps per epoch: epoch 1 is step 2..4
    assert "step 4 is now step 2" in capsys.readouterr().out
    assert [(r["step"], r["epoch"]) for r in _records(out)] == [(1, 0), (2, 0), (3, 1), (4, 1)]


def test_a_position_one_past_an_epoch_is_the_start_of_the_next():
    """Older versions wrote (step 4, epoch 0, step 4 of 4) when a periodic checkpoint fell on an epoch's end; a
    kill before the epoch-end checkpoint left it as ``last`` and its resume spun forever."""
    from mimkit.engine.checkpoint import TrainPosition
    from mimkit.engine.resume_config import RunGeometry, fit_position

    geometry = RunGeometry(images_per_step=8, steps_per_epoch=4)
    for stored in (None, {"images_per_step": 8, "steps_per_epoch": 4}):
        fitted = fit_position(TrainPosition(4, 0, 4), stored, geometry, False, Path("last.safetensors"))
        assert fitted == TrainPosition(4, 1, 0)


def test_the_sampler_refuses_a_start_past_the_epoch():
    sampler = StepSampler(dataset_size=10, global_batch=2, steps_per_epoch=4)
    with pytest.raises(ValueError, match="outside the epoch's steps 0..3"):
        sampler.set_position(0, 4)


def test_a_torn_metrics_line_is_dropped_and_reported(tmp_path, capsys):
    assert _pretrain(tmp_path / "whole") == 0
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=3") == 0
    with (out / "metrics.jsonl").open("a") as log:
        log.write('{"step": 4, "epoch": 0, "lo')  # a write cut short by a full disk
    capsys.readouterr()
    assert _resume(out) == 0
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().out
    assert _losses(out) == _losses(tmp_path / "whole")


def test_an_interrupted_metrics_rewrite_keeps_the_whole_log(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=3") == 0
    (out / "metrics.jsonl").open("a").write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    before = (out / "metrics.jsonl").read_bytes()
    replace = os.replace

    def killed_at_the_metrics(source, target):
        if Path(target).name == "metrics.jsonl":
            raise KeyboardInterrupt("killed")
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_at_the_metrics)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_pretrain_config(None, tiny_overrides(out)), resume="auto")
    assert (out / "metrics.jsonl").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_stale_temporary_checkpoints_are_removed_at_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=2") == 0
    stale = out / "checkpoints" / ".last.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)
    assert _resume(out) == 0
    assert not stale.exists()
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().out


def test_tensorboard_keeps_the_step_a_run_resumed_at(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=3") == 0
    assert _resume(out) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("pretrain/loss")] == list(range(1, 9))


def test_periodic_checkpoints_are_kept_besides_last(tmp_path):
    out = tmp_path / "run"
    pretrain(load_pretrain_config(None, tiny_overrides(out, "train.checkpoint_every=1", "train.keep_checkpoints=2")))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.safetensors", "step_00000007.safetensors", "step_00000008.safetensors"]
    assert load_checkpoint(out / "checkpoints" / "step_00000007.safetensors").position.step == 7
    kept = tmp_path / "every"
    pretrain(load_pretrain_config(None, tiny_overrides(kept, "train.checkpoint_every=1", "train.keep_checkpoints=8")))
    positions = [load_checkpoint(p).position for p in sorted((kept / "checkpoints").glob("step_*"))]
    assert [(p.step, p.epoch, p.step_in_epoch) for p in positions] == [(s, s // 4, s % 4) for s in range(1, 9)]
    with pytest.raises(ConfigError, match="train.keep_checkpoints.: must be at least 0"):
        load_pretrain_config(None, ["train.keep_checkpoints=-1"])


def _class_folders(root: Path) -> tuple[Path, Path]:
    """Two classes of 32 px pictures (reddish and bluish noise): 8 training and 4 validation images each."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for label, channel in (("red", 0), ("blue", 2)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root / "train", root / "val"


def test_fine_tuning_resumes_mid_epoch_exactly(tmp_path, capsys):
    """Mixup/CutMix, RandAugment, random erasing and drop path all draw random numbers: a fine-tune stopped
    mid-epoch and resumed gives the same losses and validation scores as one that ran through."""
    train, val = _class_folders(tmp_path / "data")
    common = [
        *TINY_RGB_ENCODER,
        "data.source=folder",
        f"data.train_path={train}",
        f"data.val_path={val}",
        "train.batch_size=4",
        "train.epochs=2",
        "train.log_every=1",
    ]
    assert main(["finetune", "--output", str(tmp_path / "whole"), *common]) == 0
    split = tmp_path / "split"
    assert main(["finetune", "--output", str(split), *common, "train.max_steps=3", "train.checkpoint_every=1"]) == 0
    assert main(["finetune", "--output", str(split), "--resume"]) == 0
    assert main(["finetune", "--output", str(split), *common]) == 2  # a new run there is refused too
    assert _losses(split) == _losses(tmp_path / "whole")
    scores = [(r["step"], r["val_top1"]) for r in _records(tmp_path / "whole") if "val_top1" in r]
    assert [(r["step"], r["val_top1"]) for r in _records(split) if "val_top1" in r and r["step"] != 3] == scores
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(split / "tensorboard"))
    events.Reload()
    assert {"finetune/loss", "finetune/val_top1"} <= set(events.Tags()["scalars"])


def test_dry_run_prints_the_summary_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--dry-run", *tiny_overrides(out, "train.max_steps=5")]) == 0
    printed = capsys.readouterr().out
    for expected in (
        "18 images (samples), 32 random crops of 64 px per epoch",
        "8 images per step (8 per process), lr 3.13e-05",
        "4 steps per epoch, 8 steps in total; this invocation stops at step 5",
        "device cpu, fp32",
        f"output:     {out}",
        "nothing written",
    ):
        assert expected in printed
    assert re.search(r"parameters: \d+\.\d\d M", printed)
    assert not out.exists()


def test_a_run_records_its_config_and_a_timestamped_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.log_every=2") == 0
    assert load_pretrain_config(str(out / "config.yaml")) == load_pretrain_config(
        None, tiny_overrides(out, "train.log_every=2")
    )
    printed = capsys.readouterr().out
    assert len(PROGRESS_LINE.findall(printed)) == 4  # steps 2, 4, 6, 8
    log = (out / "log.txt").read_text()
    assert "4 steps per epoch, 8 steps in total" in log and "epoch 1 done" in log
    assert len(re.findall(r"  step \d+/8  epoch .* eta \d+:\d\d:\d\d$", log, re.M)) == 4


def test_the_epoch_picture_is_a_seeded_choice_and_is_drawn_at_a_max_steps_stop(tmp_path):
    config = load_pretrain_config(None, tiny_overrides(tmp_path / "run", "train.max_steps=3"))
    trainer = Pretrainer(config)
    first_files, _ = load_readable(SamplePhotos(), eval_transform(64, 3, config.data.mean, config.data.std), limit=2)
    assert trainer.viz_images.shape == first_files.shape and not trainer.viz_images.equal(first_files)
    trainer.run()
    assert (tmp_path / "run" / "reconstructions" / "epoch_0000_step_00000003.png").is_file()


def test_visualize_draws_at_most_max_images(tmp_path, capsys):
    from skimage import data

    assert _pretrain(tmp_path / "run", "train.epochs=1") == 0
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(images / f"{name}.png")
    picture = tmp_path / "grid.png"
    checkpoint = tmp_path / "run" / "checkpoints" / "last.safetensors"
    args = ["visualize", "--checkpoint", str(checkpoint), "--images", str(images), "--output", str(picture)]
    assert main([*args, "--max-images", "2"]) == 0
    assert "drawing 2 of 5 images" in capsys.readouterr().out
    with Image.open(picture) as grid:
        assert grid.size[1] == 2 * 64 + 3 * 2


def test_a_checkpoint_from_elsewhere_does_not_continue_into_another_run(tmp_path, capsys):
    assert _pretrain(tmp_path / "a", "train.max_steps=2") == 0
    assert _pretrain(tmp_path / "b", "train.max_steps=2") == 0
    before = _files(tmp_path / "b")
    capsys.readouterr()
    checkpoint = tmp_path / "a" / "checkpoints" / "last.safetensors"
    assert main(["pretrain", "--resume-from", str(checkpoint), "--output", str(tmp_path / "b")]) == 2
    assert "holds another run" in _one_error_line(capsys)
    assert _files(tmp_path / "b") == before
    assert main(["pretrain", "--resume-from", str(checkpoint), "--output", str(tmp_path / "branch")]) == 0
    assert [r["step"] for r in _records(tmp_path / "branch")] == list(range(3, 9))


def test_a_checkpoint_without_optimizer_state_cannot_continue_a_run(tmp_path, capsys):
    from mimkit.engine.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert _pretrain(out, "train.max_steps=2") == 0
    last = out / "checkpoints" / "last.safetensors"
    stored = load_checkpoint(last)
    trainer = Pretrainer(load_pretrain_config(None, tiny_overrides(tmp_path / "other")))
    trainer.model.load_state_dict(stored.model)
    weights_only = save_checkpoint(tmp_path / "weights.safetensors", trainer.model, stored.config, stored.position)
    capsys.readouterr()
    assert main(["pretrain", "--resume-from", str(weights_only), "--output", str(tmp_path / "branch")]) == 2
    assert "holds no optimizer and RNG states" in _one_error_line(capsys)
