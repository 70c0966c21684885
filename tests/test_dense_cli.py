"""``mimkit detect`` and ``mimkit segment`` as a user meets them: every encoder family trains and evaluates on the
demo set, runs resume exactly, two processes equal one, and mistakes end in one line with exit code 2."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mimkit.cli import main
from mimkit.dense.demo_set import write_dense_demo
from mimkit.engine.checkpoint import load_checkpoint
from tests.conftest import needs_fashion_mnist
from tests.test_distributed import _run, _run_two_processes

pytestmark = needs_fashion_mnist

FAMILIES = ["convmae_tiny", "mixmae_swin_tiny", "mae_vit_tiny_patch16"]
"""One model per encoder family: ConvViT (MCMAE), Swin (MixMAE, LocalMIM) and plain ViT (MAE, LocalMIM, MR-MAE)."""
QUICK = ["data.img_size=64", "data.num_workers=0", "train.batch_size=2", "train.visualize_images=2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_dense_demo(tmp_path_factory.mktemp("dense") / "demo", train_images=8, val_images=4, canvas=64)


def detect_args(demo) -> list[str]:
    return [
        "detect",
        f"data.train_images={demo.coco_train_images}",
        f"data.train_annotations={demo.coco_train_annotations}",
        f"data.val_images={demo.coco_val_images}",
        f"data.val_annotations={demo.coco_val_annotations}",
        *QUICK,
    ]


def segment_args(demo) -> list[str]:
    return ["segment", f"data.path={demo.ade_root}", f"data.num_classes={demo.ade_num_classes}", *QUICK]


ARGS = {"detect": detect_args, "segment": segment_args}
HEADLINE = {"detect": ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP"), "segment": ("mIoU", "mAcc", "aAcc")}


def _losses(output) -> list[float]:
    records = map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
    return [record["loss"] for record in records if "loss" in record]


def _weights(output) -> dict[str, torch.Tensor]:
    return load_checkpoint(output / "checkpoints" / "last.safetensors").model


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_every_family_trains_and_evaluates(task, model, demo, tmp_path, capsys):
    output = tmp_path / "run"
    code = main([*ARGS[task](demo), f"model.name={model}", "train.iterations=2", f"output={output}"])
    assert code == 0, capsys.readouterr().err
    evaluation = json.loads((output / "eval.json").read_text())
    assert evaluation["step"] == 2
    for key in HEADLINE[task]:
        assert 0.0 <= evaluation[key] <= 100.0
    assert (output / "pictures" / "step_00000002.png").is_file()
    assert len(_losses(output)) == 2 and all(loss > 0 for loss in _losses(output))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= record["data_s"] <= record["step_s"] for record in records if "loss" in record)


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_a_resumed_run_equals_an_uninterrupted_one(task, demo, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = [*ARGS[task](demo), "train.iterations=5", "train.checkpoint_every=1"]
    assert main([*common, f"output={whole}"]) == 0
    assert main([*common, f"output={parts}", "train.max_steps=2"]) == 0
    assert main([*common, f"output={parts}", "--resume"]) == 0
    assert _losses(parts) == _losses(whole)  # bit-exact: same data order, augmentation and RNG streams
    expected, resumed = _weights(whole), _weights(parts)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert json.loads((parts / "eval.json").read_text()) == json.loads((whole / "eval.json").read_text())


def test_two_segmentation_processes_equal_one(demo, tmp_path):
    """Two gloo processes x 1 image equal one process x 2 images: the loss is a mean over equal-sized crops and
    every norm is a GroupNorm, so the split does not matter (drop path and head dropout off: their draws differ)."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*segment_args(demo)[:-4], "data.img_size=64", "data.num_workers=0", "train.visualize_images=0"]
    common += ["train.iterations=3", "train.drop_path=0", "model.dropout=0"]
    _run([sys.executable, "-m", "mimkit.cli", *common, f"output={one}", "train.batch_size=2"])
    _run_two_processes(*common, f"output={two}", "train.batch_size=1")
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    single, double = _weights(one), _weights(two)
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-5


def test_two_detection_processes_equal_one_process_accumulating(demo, tmp_path):
    """Mask R-CNN normalizes its losses per process (as torchvision's and Detectron2's DDP training do), so two
    processes x 1 image equal one process accumulating 2 micro-batches of 1 image. Sampling is exhaustive here
    (more anchors and proposals per image than exist), so the processes' different random streams do not matter."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*detect_args(demo)[:-4], "data.img_size=64", "data.num_workers=0", "train.visualize_images=0"]
    common += ["train.iterations=2", "train.drop_path=0", "train.batch_size=1"]
    common += ["model.rpn_batch_size_per_image=100000", "model.box_batch_size_per_image=100000"]
    _run([sys.executable, "-m", "mimkit.cli", *common, f"output={one}", "train.accum_steps=2"])
    _run_two_processes(*common, f"output={two}")
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    single, double = _weights(one), _weights(two)
    assert max((single[k] - double[k]).abs().max().item() for k in single) < 1e-4


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_mistakes_end_in_one_line(demo, tmp_path, capsys):
    assert "data.train_images=..." in _error(capsys, ["detect"])
    assert "data.path=..." in _error(capsys, ["segment", "data.num_classes=3"])
    assert "multiple of 32" in _error(capsys, [*segment_args(demo), "data.img_size=80"])
    assert "video model" in _error(capsys, [*segment_args(demo), "model.name=videoconvmae_tiny"])
    missing = [a if not a.startswith("data.val_annotations") else "data.val_annotations=/nowhere.json" for a in
               detect_args(demo)]
    assert "/nowhere.json" in _error(capsys, [*missing, f"output={tmp_path / 'a'}"])
    assert "num_classes" in _error(capsys, [*segment_args(demo), "data.num_classes=4", f"output={tmp_path / 'b'}"])
    assert "recipe of `mimkit detect`" in _error(capsys, ["segment", "--config", "detect/convmae_base_maskrcnn_25ep"])
    assert "recipe of `mimkit segment`" in _error(capsys, ["pretrain", "--config", "segment/convmae_base_upernet_16k"])
    assert "feature_blocks" in _error(
        capsys, [*segment_args(demo), "model.feature_blocks=[1,2,3,4]", f"output={tmp_path / 'c'}"]
    )


def test_a_finished_run_is_neither_overwritten_nor_resumed_with_other_settings(demo, tmp_path, capsys):
    output = tmp_path / "run"
    common = [*segment_args(demo), "train.iterations=2", f"output={output}"]
    assert main(common) == 0
    before = (output / "checkpoints" / "last.safetensors").read_bytes()
    assert "--resume" in _error(capsys, common)
    assert "would change the run" in _error(capsys, [*common, "--resume", "optim.lr=0.5"])
    assert (output / "checkpoints" / "last.safetensors").read_bytes() == before


def test_the_picture_shows_confident_detections_or_else_the_best_few():
    from mimkit.dense.detection_task import shown_detections

    scores = torch.tensor([0.9, 0.6, 0.35, 0.2, 0.1])
    prediction = {"scores": scores, "labels": torch.arange(5), "boxes": torch.zeros(5, 4)}
    assert shown_detections(prediction)["labels"].tolist() == [0, 1, 2]
    weak = {**prediction, "scores": scores / 10}
    assert shown_detections(weak)["scores"].tolist() == pytest.approx([0.09, 0.06, 0.035])
    assert len(shown_detections({k: v[:0] for k, v in prediction.items()})["scores"]) == 0


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_activation_checkpointing_keeps_the_losses(task, demo, tmp_path, capsys):
    """Dense training with each backbone block recomputed in the backward pass: the same losses; FSDP is refused."""
    common = [*ARGS[task](demo), "train.iterations=2"]
    assert main([*common, f"output={tmp_path / 'plain'}"]) == 0
    assert main([*common, f"output={tmp_path / 'checkpointed'}", "train.activation_checkpointing=true"]) == 0
    assert _losses(tmp_path / "checkpointed") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-6)
    fsdp = [*common, f"output={tmp_path / 'fsdp'}", "train.strategy=fsdp"]
    assert "train.strategy=fsdp is for pretraining and fine-tuning" in _error(capsys, fsdp)
