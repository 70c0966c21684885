"""Where a run's records go (``train.trackers``): each backend, run through the command line in its offline or file
mode, holds the step records (per-part losses, lr, times, throughput) and the reconstruction pictures; transfer
runs log under their own tag; the choice is checked and may change on resume (tiny runs, seconds each)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from mimkit.cli import main
from tests.conftest import tiny_overrides

TIMING = ("lr", "images_per_s", "data_s", "step_s")


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _table(output: Path) -> tuple[list[str], list[dict]]:
    with (output / "metrics.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_localmim_logs_its_tap_losses_times_and_pictures_to_tensorboard_and_csv(tmp_path):
    """LocalMIM's per-tap losses are averaged over the accumulated micro-batches like the loss (their sum, with
    the default unit weights, is the loss); TensorBoard shows them, lr, data and step time, throughput and the
    epoch's reconstruction picture; the CSV table holds the same records as metrics.jsonl."""
    output = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        "localmim/localmim_vit_tiny_samples.yaml",
        "--output",
        str(output),
        "model.args.target=pixels",
        "data.img_size=64",
        "data.samples_per_epoch=16",
        "data.num_workers=0",
        "optim.warmup_epochs=0.5",
        "train.epochs=1",
        "train.batch_size=4",
        "train.accum_steps=2",
        "train.visualize_images=2",
        "train.trackers=[tensorboard,csv]",
    ]
    assert main(args) == 0
    records = _records(output)
    taps = [name for name in records[0] if name.startswith("loss_tap")]
    assert len(taps) == 4 and [r["step"] for r in records] == [1, 2]
    for record in records:
        assert set(TIMING) <= set(record) and record["images_per_s"] > 0
        assert record["loss"] == pytest.approx(sum(record[name] for name in taps), rel=1e-6)

    events = _events(output / "tensorboard")
    for name in ("loss", *taps, *TIMING):
        assert [(e.step, e.value) for e in events.Scalars(f"pretrain/{name}")] == [
            (r["step"], pytest.approx(r[name], rel=1e-6)) for r in records
        ], name
    (picture,) = events.Images("pretrain/reconstructions")
    assert picture.step == 2 and (picture.width, picture.height) == (4 * 64 + 5 * 2, 2 * 64 + 3 * 2)

    header, rows = _table(output)
    assert header == list(records[0])
    assert [{k: float(v) for k, v in row.items()} for row in rows] == records


def test_csv_table_keeps_its_header_across_a_resume_that_changes_the_trackers(tmp_path):
    """train.trackers may change on resume: the resumed run drops TensorBoard and the CSV table continues with
    the same header, its rows equal to metrics.jsonl's (the records after the checkpoint's step are redone)."""
    output = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(output, "train.trackers=[tensorboard,csv]", "train.max_steps=3")]) == 0
    first_header, _ = _table(output)
    with (output / "metrics.csv").open("a") as table:
        table.write("4,0,0.99")  # a row torn by a kill: dropped on resume
    assert main(["pretrain", "--output", str(output), "--resume", "train.trackers=[csv]"]) == 0
    header, rows = _table(output)
    records = _records(output)
    assert header == first_header == list(records[0])
    assert [int(row["step"]) for row in rows] == [r["step"] for r in records] == list(range(1, 9))
    assert [float(row["loss"]) for row in rows] == [r["loss"] for r in records]
    assert [e.step for e in _events(output / "tensorboard").Scalars("pretrain/loss")] == [1, 2, 3]


def test_wandb_offline_run_holds_the_records_and_a_resume_continues_it(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    output = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(output, "train.trackers=[wandb]", "train.max_steps=2")]) == 0
    assert main(["pretrain", "--output", str(output), "--resume"]) == 0
    run_id = json.loads((output / "trackers.json").read_text())["wandb"]
    runs = sorted((output / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(f"-{run_id}") for run in runs)  # one W&B run, resumed
    history = b"".join(run.joinpath(f"run-{run_id}.wandb").read_bytes() for run in runs)
    for name in ("loss", *TIMING, "epoch"):
        assert f"pretrain/{name}".encode() in history, name
    pictures = sorted(p.name for run in runs for p in run.glob("files/media/images/pretrain/reconstructions_*.png"))
    assert [name.split("_")[1] for name in pictures] == ["2", "4", "8"]
    assert not (output / "tensorboard").exists()


def test_mlflow_file_store_holds_metrics_config_and_pictures_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(variable, raising=False)
    output = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(output, "train.trackers=[mlflow]", "train.max_steps=2")]) == 0
    assert main(["pretrain", "--output", str(output), "--resume"]) == 0
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # allowed for mimkit's own store only, then restored
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((output / "mlruns").as_uri())
    run_id = json.loads((output / "trackers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    records = _records(output)
    for name in ("loss", *TIMING):
        history = client.get_metric_history(run_id, f"pretrain/{name}")
        assert [(m.step, m.value) for m in history] == [(r["step"], r[name]) for r in records], name
    assert run.data.params["train.batch_size"] == "8" and run.data.params["model.name"] == "mae_vit_tiny_patch16"
    assert json.loads(Path(client.download_artifacts(run_id, "config.json", str(tmp_path))).read_text())["train"][
        "max_steps"
    ] is None  # the resumed invocation's config
    pictures = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pictures) == [2, 4, 8]


def test_linear_probe_logs_its_steps_and_validation_under_its_tag(tmp_path):
    from tests.transfer_files import TINY_RGB_ENCODER, write_labelled_images

    data = write_labelled_images(tmp_path / "data", per_class=8, val_per_class=4)
    output = tmp_path / "probe"
    args = [
        "linprobe",
        "--output",
        str(output),
        *data,
        *TINY_RGB_ENCODER,
        "train.batch_size=4",
        "train.epochs=2",
        "train.trackers=[tensorboard,csv]",
    ]
    assert main(args) == 0
    scores = [r for r in _records(output) if "val_top1" in r]
    assert [r["step"] for r in scores] == [4, 8]
    events = _events(output / "tensorboard")
    for name in ("val_top1", "val_top5"):
        assert [(e.step, e.value) for e in events.Scalars(f"linprobe/{name}")] == [
            (r["step"], pytest.approx(r[name])) for r in scores
        ]
    assert len(events.Scalars("linprobe/images_per_s")) == 8
    header, rows = _table(output)
    assert header[-2:] == ["val_top1", "val_top5"]  # appended when the first validation came
    assert [row["step"] for row in rows if row["val_top1"]] == ["4", "8"]
    assert all(row["val_top1"] == "" for row in rows if row["loss"])


def test_an_unknown_or_missing_tracker_is_one_error_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    assert main(["pretrain", *tiny_overrides(tmp_path / "run", "train.trackers=[tensorboard,comet]")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: config field 'train.trackers[1]'"), err
    assert "'jsonl', 'tensorboard', 'csv', 'wandb', 'mlflow'" in err and "'comet'" in err

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert main(["pretrain", *tiny_overrides(tmp_path / "run", "train.trackers=[wandb]")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`pip install wandb`" in err, err
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything
