"""The Python training API (``mimkit.pretrain``, ``finetune``, ``linprobe``, ``knn``): the commands' engine driven with
a config object, file, recipe or dict and a user's ``Dataset``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit.api import pretrainer
from mimkit.cli import main
from mimkit.config_schema import ConfigError, to_dict
from mimkit.engine.checkpoint_metadata import stored_config
from mimkit.engine.config import load_pretrain_config
from mimkit.errors import DataError, MimkitError
from tests.conftest import tiny_overrides

TINY_ENCODER = ["model.args.embed_dim=32", "model.args.depth=1", "model.args.num_heads=2", "data.num_workers=0"]
TINY_TRANSFER = [*TINY_ENCODER, "train.batch_size=8"]


class FlatImages(torch.utils.data.Dataset):
    """Images of one gray level each (item ``i``: ``LEVELS[i]``), in turn a PIL image, an HWC uint8 array and a CHW
    float tensor, so every crop of item ``i`` holds only its level."""

    LEVELS = (10, 60, 110, 160, 210, 250)

    def __len__(self) -> int:
        return len(self.LEVELS)

    def __getitem__(self, index: int):
        pixels = np.full((24, 30, 3), self.LEVELS[index], np.uint8)
        if index % 3 == 0:
            return Image.fromarray(pixels)
        if index % 3 == 1:
            return pixels
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


class Pairs(torch.utils.data.Dataset):
    """``(image, label)`` pairs of two classes told apart by brightness (a dark and a bright noise)."""

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        label = index % 2
        rng = np.random.default_rng(self.seed * 1000 + index)
        return Image.fromarray((rng.integers(0, 96, (20, 20)) + 128 * label).astype(np.uint8)), label


class Recorder(mimkit.Callback):
    """Records the steps and the run end the trainers tell it of."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.ended = 0

    def on_step(self, trainer, record) -> None:
        self.steps.append(record["step"])

    def on_run_end(self, trainer, summary) -> None:
        self.ended += 1


def test_pretraining_from_python_trains_on_the_users_dataset_and_returns_the_summary(tmp_path):
    """The run reads the dataset's images (through mimkit's crops), keeps the callback, writes a checkpoint that
    records the Python source and its length, and returns the summary."""
    recorder = Recorder()
    overrides = tiny_overrides(tmp_path / "run", "train.epochs=1", "train.visualize_images=2")
    trainer = pretrainer(None, FlatImages(), overrides=overrides, callbacks=[recorder])
    assert trainer.callbacks.callbacks == (recorder,)
    assert trainer.describe()[1].startswith("data:       6 images (python)")
    batch = next(iter(trainer.loader))["image"]  # uint8 crops, normalized on the device
    assert batch.shape == (8, 3, 64, 64) and set(batch.unique().tolist()) <= set(FlatImages.LEVELS)

    summary = mimkit.pretrain(None, FlatImages(), overrides=overrides, callbacks=[recorder])
    assert summary.steps == 4 and summary.checkpoint.is_file() and summary.reconstructions[-1].is_file()
    assert (recorder.steps, recorder.ended) == ([1, 2, 3, 4], 1)
    assert np.isfinite(summary.last_loss)
    data = stored_config(summary.checkpoint)["data"]
    assert (data["source"], data["python_length"], data["path"]) == ("python", 6, None)


def test_config_objects_files_recipes_dicts_and_the_cli_run_the_same(tmp_path):
    """One run five ways (the command line, a config object, a YAML file, a dict, a dict plus overrides): the same
    losses, step for step."""
    overrides = tiny_overrides("unused", "train.max_steps=2", "train.visualize_images=0")

    def losses(output) -> list[float]:
        lines = (output / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    assert main(["pretrain", *overrides, f"output={tmp_path / 'cli'}"]) == 0
    config = load_pretrain_config(None, [*overrides, f"output={tmp_path / 'object'}"])
    mimkit.pretrain(config)
    as_dict = to_dict(config)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(json.dumps({**as_dict, "output": str(tmp_path / "file")}))
    mimkit.pretrain(yaml_file)
    mimkit.pretrain({**as_dict, "output": str(tmp_path / "dict")})
    mimkit.pretrain(as_dict, overrides=[f"output={tmp_path / 'overridden'}"])
    reference = losses(tmp_path / "cli")
    assert len(reference) == 2
    for name in ("object", "file", "dict", "overridden"):
        assert losses(tmp_path / name) == reference, name


def test_a_recipe_name_is_a_config_and_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="recipe of `mimkit finetune`"):
        mimkit.pretrain("finetune/mae_vit_base_100ep")
    with pytest.raises(MimkitError, match="config is a int"):
        mimkit.pretrain(3)
    trainer = pretrainer("mae/vit_tiny_samples", overrides=["train.max_steps=1", f"output={tmp_path}"])
    assert trainer.config.model.name == "mae_vit_tiny_patch16"


def test_a_resume_with_another_dataset_is_refused_like_any_change(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path / "run", "train.max_steps=1", "train.visualize_images=0")
    mimkit.pretrain(None, FlatImages(), overrides=overrides)
    with pytest.raises(ConfigError, match=r"would change the run: data.python_length 6 -> 5"):
        mimkit.pretrain(None, torch.utils.data.Subset(FlatImages(), range(5)), overrides=overrides, resume="auto")
    resumed = mimkit.pretrain(None, FlatImages(), overrides=[*overrides, "train.max_steps=2"], resume="auto")
    assert resumed.steps == 2

    capsys.readouterr()
    assert main(["pretrain", "--output", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no dataset= was given" in err


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("photo.png", r"dataset\[0\] is a str, not an image"),
        (np.zeros((3, 8, 8), np.uint8), r"dataset\[0\] is an array of shape \(3, 8, 8\); arrays are channels last"),
        (np.zeros((8, 8, 3), np.float32), r"dataset\[0\] is a float32 array"),
        (torch.full((3, 8, 8), -1.5), r"dataset\[0\] is a float tensor with values in \[-1.5, -1.5\], not in \[0, 1\]"),
        (torch.zeros(2, 8, 8), r"dataset\[0\] is a tensor of shape \(2, 8, 8\)"),
        ({"pixels": 1}, r"dataset\[0\] is a mapping with keys \['pixels'\]; it needs 'image'"),
    ],
    ids=["path", "chw-array", "float-array", "normalized-tensor", "two-channels", "mapping"],
)
def test_a_wrong_item_is_refused_at_once_naming_the_item_and_its_form(tmp_path, item, message):
    with pytest.raises(DataError, match=message) as caught:
        mimkit.pretrain(None, [item, item], overrides=tiny_overrides(tmp_path / "run"))
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_a_transfer_dataset_must_hold_image_label_pairs_with_its_validation_pairs(tmp_path):
    images = [Image.new("L", (8, 8))] * 4
    overrides = [*TINY_TRANSFER, f"output={tmp_path / 'run'}"]
    with pytest.raises(DataError, match=r"dataset\[0\] is a Image, not an \(image, label\) pair"):
        mimkit.finetune(None, images, val_dataset=images, overrides=overrides)
    with pytest.raises(DataError, match=r"dataset\[0\] has the label 0.5; labels are class indices"):
        mimkit.finetune(None, [(image, 0.5) for image in images], val_dataset=Pairs(4), overrides=overrides)
    with pytest.raises(MimkitError, match="dataset= needs val_dataset= too"):
        mimkit.finetune(None, Pairs(8), overrides=overrides)
    with pytest.raises(DataError, match="dataset is a int; give a map-style dataset"):
        mimkit.knn(None, 3, val_dataset=Pairs(4), overrides=TINY_ENCODER)


def test_finetuning_probing_and_knn_from_python_on_image_label_pairs(tmp_path):
    """A random-init tiny ViT learns the two brightness classes of the user's pairs; the probe and kNN run on them
    too. The summary's checkpoints exist and record the Python source."""
    recorder = Recorder()
    train, val = Pairs(16), Pairs(8, seed=1)
    overrides = [*TINY_TRANSFER, "train.epochs=2", f"output={tmp_path / 'ft'}"]
    summary = mimkit.finetune(None, train, val_dataset=val, overrides=overrides, callbacks=[recorder])
    assert summary.steps == 4 and len(summary.history) == 2 and summary.best_top1 >= 75
    assert (recorder.steps, recorder.ended) == ([1, 2, 3, 4], 1)
    assert summary.best_checkpoint.is_file() and summary.last_checkpoint.is_file()
    data = stored_config(summary.last_checkpoint)["data"]
    assert (data["source"], data["python_length"], data["python_val_length"]) == ("python", 16, 8)

    probe = mimkit.linprobe(
        None, train, val_dataset=val, overrides=[*TINY_TRANSFER, "train.max_steps=1", f"output={tmp_path / 'lp'}"]
    )
    assert probe.steps == 1 and probe.last_checkpoint.is_file()
    result = mimkit.knn(None, train, val_dataset=val, overrides=[*TINY_ENCODER, "k=3"])
    assert (result.train_images, result.val_images) == (16, 8) and result.top1 >= 75


def test_an_undecodable_picture_is_skipped_and_counted_like_an_unreadable_file(tmp_path):
    """A float image holding NaN cannot be decoded (the rule for files): the run skips and counts it, even as the
    first item, instead of stopping; only items of a wrong form stop a run."""
    broken = Image.fromarray(np.full((24, 24), np.nan, np.float32))  # mode "F"
    images = [broken, *(FlatImages()[i] for i in range(5))]
    summary = mimkit.pretrain(None, images, overrides=tiny_overrides(tmp_path / "run", "train.epochs=1"))
    assert summary.steps == 4 and summary.skipped_images > 0
