"""Running a fine-tuned classifier: `mimkit predict` and `mimkit evaluate` on images prepared as the run evaluated
them, and the classifier (encoder and head) through timm from `mimkit export`."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

from mimkit.cli import main
from mimkit.data import eval_transform
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.eval.classifier_checkpoint import load_classifier
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import tiny_overrides
from tests.transfer_files import pretrain_checkpoint

CLASSES = ["dark", "grey", "light"]


def _write_overlapping_classes(root, per_class: int) -> None:
    """Noisy 24-px RGB images whose classes differ only a little in brightness (they overlap, so a short run is
    right on some images and wrong on others, and a change in preprocessing would change its answers)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 180, (24, 24, 3)) + 30 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index:02d}.png")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 3-class fine-tuning run of a tiny pretrained ViT (64 px, RGB): its last checkpoint, validation folder and
    the validation top-1 it reported last."""
    root = tmp_path_factory.mktemp("finetuned")
    pretrained = pretrain_checkpoint(root / "pre", *tiny_overrides(root / "pre"))
    _write_overlapping_classes(root / "train", 12)
    _write_overlapping_classes(root / "val", 6)
    data = ["data.source=folder", f"data.train_path={root / 'train'}", f"data.val_path={root / 'val'}"]
    recipe = ["data.num_workers=0", "train.batch_size=4", "train.epochs=3", "optim.base_lr=0.2"]
    recipe.append("optim.warmup_epochs=1")
    assert main(["finetune", "--checkpoint", str(pretrained), "--output", str(root / "ft"), *data, *recipe]) == 0
    log = [json.loads(line) for line in (root / "ft" / "metrics.jsonl").read_text().splitlines()]
    reported = [record["val_top1"] for record in log if "val_top1" in record][-1]
    return {
        "checkpoint": root / "ft" / "checkpoints" / "last.safetensors",
        "pretrained": pretrained,
        "val": root / "val",
        "val_top1": reported,
    }


def _val_logits(finetuned) -> tuple[list[str], torch.Tensor]:
    """The classifier's logits on the validation images, prepared by hand as the run's record says."""
    record = load_checkpoint(finetuned["checkpoint"]).config["data"]
    transform = eval_transform(record["img_size"], record["in_chans"], record["mean"], record["std"], 0.875)
    paths = sorted(str(p) for p in finetuned["val"].rglob("*.png"))
    images = torch.stack([transform(Image.open(p)) for p in paths])
    with torch.no_grad():
        return paths, load_classifier(finetuned["checkpoint"]).model(images)


def test_evaluate_reports_the_runs_own_validation_accuracy(finetuned, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    args = ["evaluate", "--checkpoint", str(finetuned["checkpoint"]), "--data", str(finetuned["val"])]
    assert main([*args, "--output", str(metrics), "--top-k", "2"]) == 0
    assert "top-1" in capsys.readouterr().out
    result = json.loads(metrics.read_text())
    assert 0 < result["top1"] < 100  # the classes overlap: a score that preprocessing changes
    assert result["top1"] == pytest.approx(finetuned["val_top1"], abs=1e-4)
    assert result["images"] == 18 and result["top_k"] == 2 and result["top1"] <= result["top2"]
    _, logits = _val_logits(finetuned)
    labels = torch.arange(3).repeat_interleave(6)
    hits = logits.argmax(dim=1) == labels
    assert {name: entry["images"] for name, entry in result["per_class"].items()} == dict.fromkeys(CLASSES, 6)
    assert [entry["top1"] for entry in result["per_class"].values()] == [
        pytest.approx(100 * hits[labels == c].float().mean().item()) for c in range(3)
    ]

    assert main([*args, "--output", str(metrics)]) == 2
    refusal = f"error: --output {metrics} exists; add --overwrite to replace it, or choose another file\n"
    assert capsys.readouterr().err == refusal
    assert main([*args, "--output", str(metrics), "--overwrite"]) == 0


def test_evaluate_refuses_what_it_cannot_score(finetuned, tmp_path, capsys):
    checkpoint = str(finetuned["checkpoint"])

    def refused(args: list[str], says: str) -> None:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err

    on_val = ["evaluate", "--checkpoint", checkpoint, "--data", str(finetuned["val"])]
    pretrained = ["evaluate", "--checkpoint", str(finetuned["pretrained"]), "--data", str(finetuned["val"])]
    refused(pretrained, "is not a fine-tuning or linear-probe checkpoint")
    two = tmp_path / "two"
    shutil.copytree(finetuned["val"], two)
    shutil.rmtree(two / "light")
    refused(["evaluate", "--checkpoint", checkpoint, "--data", str(two)], "has 2 class sub-folders, but")
    (two / "grey").rename(two / "gray")
    shutil.copytree(two / "dark", two / "light")
    refused(["evaluate", "--checkpoint", checkpoint, "--data", str(two)], "gray (checkpoint: grey)")
    refused(["evaluate", "--checkpoint", checkpoint, "--data", str(two / "dark")], "evaluation images have no labels")
    refused([*on_val, "--top-k", "4"], "--top-k must be between 1 and the checkpoint's 3 classes")
    refused([*on_val, "--output", checkpoint], "write a .json file")
    other = shutil.copy(checkpoint, tmp_path / "other.json")
    before = other.read_bytes()
    refused([*on_val, "--output", str(other), "--overwrite"], "is a mimkit checkpoint")
    assert other.read_bytes() == before


@pytest.mark.parametrize("form", ["csv", "json"])
def test_predict_writes_the_classifiers_ranking_and_skips_unreadable_images(finetuned, tmp_path, capsys, form):
    paths, logits = _val_logits(finetuned)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    output = tmp_path / f"predictions.{form}"
    args = ["predict", "--checkpoint", str(finetuned["checkpoint"]), str(finetuned["val"]), str(broken)]
    assert main([*args, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 1 unreadable image(s): {broken}" in printed and "top-3 predictions for 18 images" in printed

    probabilities = logits.softmax(dim=1)
    if form == "csv":
        rows = list(csv.DictReader(output.open()))
        got = [(r["path"], int(r["top1_class"]), r["top1_label"], float(r["top1_probability"])) for r in rows]
        assert list(rows[0]) == ["path"] + [f"top{k}_{p}" for k in (1, 2, 3) for p in ("class", "label", "probability")]
    else:
        document = json.loads(output.read_text())
        assert document["skipped"][0].startswith(str(broken))
        got = [
            (p["path"], p["top_k"][0]["class"], p["top_k"][0]["label"], p["top_k"][0]["probability"])
            for p in document["predictions"]
        ]
        assert all(len(p["top_k"]) == 3 for p in document["predictions"])
    assert [g[0] for g in got] == paths
    assert [g[1] for g in got] == logits.argmax(dim=1).tolist()
    assert [g[2] for g in got] == [CLASSES[i] for i in logits.argmax(dim=1).tolist()]
    assert [g[3] for g in got] == pytest.approx(probabilities.max(dim=1).values.tolist(), abs=1e-6)

    assert main([*args, "--output", str(output)]) == 2
    assert "exists; add --overwrite" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "predictions.txt")]) == 2
    assert "write a .csv or .json file" in capsys.readouterr().err


def test_a_finetuned_classifier_exports_to_timm_with_its_head(finetuned, tmp_path, capsys):
    exported = tmp_path / "classifier.safetensors"
    assert main(["export", "--checkpoint", str(finetuned["checkpoint"]), "--output", str(exported)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("3-class classifier (encoder and head) written to")
    name = printed.split("timm.create_model('")[1].split("'")[0]

    overlay = {"file": str(exported)}
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    assert model.pretrained_cfg["label_names"] == tuple(CLASSES)
    assert resolve_data_config({}, model=model) == {
        "input_size": (3, 64, 64),
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = load_classifier(finetuned["checkpoint"]).model(images)
        assert (model(images) - expected).abs().max() <= 1e-6
        same_head = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3).eval()
        assert (same_head(images) - expected).abs().max() <= 1e-6
    new_head = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=5)
    assert new_head(images).shape == (4, 5)
