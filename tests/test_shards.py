"""The sharded format: ``mimkit shards`` round trip, training on shards with 1 or 2 processes and with resumes, and
the command line's errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli import main
from mimkit.data.decode import open_image
from mimkit.data.sources import ImageFolder
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import Pretrainer, pretrain
from tests.conftest import tiny_overrides
from tests.test_distributed import _run, _run_two_processes

pytest.importorskip("streaming", reason="the shards format needs mosaicml-streaming (pip install 'mimkit[shards]')")

IMAGES = 40
FILES = IMAGES + 2  # and the 16-bit and the palette image


def _image_folder(root):
    """40 small images in two class folders, with a 16-bit grayscale PNG and a palette image among them (decoding
    rules differ for those)."""
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24 + index % 5, 32, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    wide = rng.integers(0, 65536, (30, 30)).astype(np.uint16)
    Image.fromarray(wide).save(root / "class0" / "wide.png")
    Image.fromarray(rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)).convert("P").save(root / "class1" / "pal.gif")
    return root


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    """The image folder and its shards (small shards, so that an epoch spans many of them)."""
    root = tmp_path_factory.mktemp("shards")
    images = _image_folder(root / "images")
    assert main(["shards", str(images), str(root / "shards"), "--shard-size", "16kb"]) == 0
    return images, root / "shards"


def _overrides(shards, output, *extra):
    """Tiny pretraining on ``shards``, an epoch being every image once."""
    data = ["data.source=shards", f"data.path={shards}", "data.img_size=32", "data.samples_per_epoch=null"]
    return tiny_overrides(output, *data, *extra)


def _losses(output):
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_shards_round_trip_decodes_the_same_pixels(shard_folder):
    from mimkit.data.shards import open_shards

    images, shards = shard_folder
    assert len(list(shards.glob("shard.*.mds"))) > 3
    folder, stored = ImageFolder(images), open_shards(str(shards), None, 0, None, 1)
    assert len(stored) == len(folder) == FILES
    for index in range(len(folder)):
        record = stored.stream.get_item(index)
        assert record["name"] == folder.paths[index].relative_to(images).as_posix()
        assert record["label"] == folder.labels[index]
        expected, got = open_image(folder.paths[index]), stored.load(index)
        assert got.mode == expected.mode and np.array_equal(np.asarray(got), np.asarray(expected))


def test_a_file_that_is_no_image_is_stored_and_unreadable_as_in_the_folder(tmp_path):
    from mimkit.data.shards import open_shards

    _image_folder(tmp_path / "images")
    (tmp_path / "images" / "class1" / "broken.png").write_bytes(b"not an image")
    assert main(["shards", str(tmp_path / "images"), str(tmp_path / "shards")]) == 0
    stored = open_shards(str(tmp_path / "shards"), None, 0, None, 1)
    broken = [stored.stream.get_item(i)["name"] for i in range(len(stored))].index("class1/broken.png")
    with pytest.raises(OSError):
        stored.load(broken)


PARTS_SCRIPT = """
import json, os, sys
from mimkit.engine.config import load_pretrain_config
from mimkit.engine.pretrain import Pretrainer

out, overrides = sys.argv[1], sys.argv[2:]
trainer = Pretrainer(load_pretrain_config(None, overrides))
steps = {}
for epoch, start in ((0, 0), (1, 0), (1, 2)):
    trainer.sampler.set_position(epoch, start)
    steps[f"{epoch}.{start}"] = [batch["index"].tolist() for batch in trainer.loader][: trainer.steps_per_epoch - start]
with open(os.path.join(out, f"rank{trainer.dist.rank}.json"), "w") as handle:
    json.dump({"steps": steps, "per_epoch": trainer.steps_per_epoch}, handle)
"""


def test_two_processes_read_disjoint_parts_of_the_one_process_steps(shard_folder, tmp_path):
    """Streaming's guarantee, as the engine uses it: with the canonical nodes fixed, step s of an epoch reads the same
    set of images whatever the number of processes and loader workers; the processes' parts of it are disjoint; a
    position set mid-epoch (a resume) continues with the same steps."""
    _, shards = shard_folder
    script = tmp_path / "parts.py"
    script.write_text(PARTS_SCRIPT)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    one = _overrides(shards, tmp_path / "run", "train.batch_size=8")
    two = _overrides(shards, tmp_path / "run", "train.batch_size=4", "data.num_workers=2")
    _run([sys.executable, str(script), str(tmp_path / "one"), *one])
    _run_two_processes(str(tmp_path / "two"), *two, program=(str(script),))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert one["per_epoch"] == ranks[0]["per_epoch"] == FILES // 8
    epochs = [one["steps"][key] for key in ("0.0", "1.0")]
    assert epochs[0] != epochs[1]  # each epoch has its own order
    assert one["steps"]["1.2"] == epochs[1][2:]  # the position mid-epoch resumes with the same steps
    for epoch in epochs:
        assert len(set(sum(epoch, []))) == len(sum(epoch, [])) == 8 * one["per_epoch"]  # no image twice
    for key, steps in one["steps"].items():
        parts = [ranks[rank]["steps"][key] for rank in (0, 1)]
        assert len(parts[0]) == len(parts[1]) == len(steps)
        for step, (first, second) in enumerate(zip(*parts, strict=True)):
            assert len(first) == len(second) == 4 and not set(first) & set(second)
            assert sorted(first + second) == sorted(steps[step])


def test_two_processes_train_on_shards(shard_folder, tmp_path):
    """2 processes x 4 images run the same steps as 1 process x 8 (the images of each step: see above). The losses
    are close but not equal: streaming deals a step's images to the processes interleaved, so the masking noise,
    drawn for the global batch by row, falls on other images than with one process."""
    _, shards = shard_folder
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "mimkit.cli", "pretrain", *_overrides(shards, one, "train.batch_size=8")])
    _run_two_processes("pretrain", *_overrides(shards, two, "train.batch_size=4", "data.num_workers=1"))
    assert len(_losses(two)) == len(_losses(one)) == 2 * (FILES // 8)
    assert _losses(two) == pytest.approx(_losses(one), rel=0.05)


def test_resume_mid_epoch_on_shards_continues_exactly(shard_folder, tmp_path):
    """Also with loader workers in the split run only: streaming's split between workers and the crops seeded by
    (seed, epoch, index) do not change the batches."""
    _, shards = shard_folder
    whole, split = tmp_path / "whole", tmp_path / "split"
    pretrain(load_pretrain_config(None, _overrides(shards, whole)))
    pretrain(load_pretrain_config(None, _overrides(shards, split, "train.max_steps=3", "data.num_workers=2")))
    assert len(_losses(split)) == 3
    pretrain(load_pretrain_config(None, _overrides(shards, split, "data.num_workers=2")), resume="auto")
    assert _losses(split) == _losses(whole)
    first = load_checkpoint(whole / "checkpoints" / "last.safetensors").model
    second = load_checkpoint(split / "checkpoints" / "last.safetensors").model
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_loader_workers_crop_each_image_by_its_epoch(shard_folder, tmp_path):
    """An image read in a loader worker gets the crop of (seed, epoch, index), a new one each epoch."""
    _, shards = shard_folder
    trainer = Pretrainer(load_pretrain_config(None, _overrides(shards, tmp_path, "data.num_workers=2")))
    crops = []
    for epoch in (0, 1):
        trainer.sampler.set_position(epoch, 0)
        batches = list(trainer.loader)
        crops.append({i: image for b in batches for i, image in zip(b["index"].tolist(), b["image"], strict=True)})
    augmented = trainer.sampler.augmented
    for epoch, seen in enumerate(crops):
        for index, image in seen.items():
            assert torch.equal(image, augmented[(epoch, index)]["image"])
    assert not any(torch.equal(crops[0][index], crops[1][index]) for index in crops[0])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_shards_command_errors(shard_folder, tmp_path, capsys):
    images, shards = shard_folder
    assert main(["shards", str(images), str(shards)]) == 2
    assert "exists and is not empty; name a new folder" in _error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["shards", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no images found" in _error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert main(["shards", str(images), str(tmp_path / "out"), "--shard-size", "big"]) == 2
    assert "--shard-size 'big' is not a size" in _error_line(capsys)


def test_pretraining_on_shards_errors(tmp_path, capsys):
    assert main(["pretrain", *_overrides(tmp_path, tmp_path / "run"), "data.path=null"]) == 2
    assert "data.source 'shards' needs data.path" in _error_line(capsys)
    assert main(["pretrain", *_overrides("s3://bucket/shards", tmp_path / "run")]) == 2
    assert "set data.cache" in _error_line(capsys)
    assert main(["pretrain", *_overrides(tmp_path, tmp_path / "run")]) == 2
    assert "holds no shards (no index.json); write them with mimkit shards" in _error_line(capsys)
