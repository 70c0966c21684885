"""The pretraining engine end to end on the sample photos (tiny model, seconds on a CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mimkit.cli import main
from mimkit.data.sources import FASHION_MNIST_DIR
from mimkit.engine.pretrain import Pretrainer, pretrain
from mimkit.errors import NonFiniteLossError
from tests.teacher_files import save_tiny_mae_checkpoint


def _losses(output):
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def _weights(output):
    from mimkit.engine.checkpoint import load_checkpoint

    return load_checkpoint(output / "checkpoints" / "last.safetensors").model


def test_run_leaves_checkpoint_metrics_tensorboard_and_pictures(tiny_config, tmp_path):
    summary = pretrain(tiny_config())
    out = tmp_path / "run"
    assert summary.steps == 8  # 32 crops per epoch / batch 8 = 4 steps, 2 epochs
    assert summary.checkpoint == out / "checkpoints" / "last.safetensors" and summary.checkpoint.is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records)
    assert records[0]["lr"] == 0.0 and records[3]["lr"] > 0  # linear warm-up from zero
    assert any((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["epoch_0000.png", "epoch_0001.png"]


def test_resume_mid_epoch_continues_exactly(tiny_config, tmp_path):
    pretrain(tiny_config(output=tmp_path / "whole"))
    pretrain(tiny_config("train.max_steps=3", output=tmp_path / "split"))
    assert len(_losses(tmp_path / "split")) == 3
    pretrain(tiny_config(output=tmp_path / "split"), resume="auto")
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    whole, split = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_gradient_accumulation_matches_the_large_batch(tiny_config, tmp_path):
    pretrain(tiny_config("train.batch_size=8", output=tmp_path / "big"))
    pretrain(tiny_config("train.batch_size=4", "train.accum_steps=2", output=tmp_path / "accum"))
    assert _losses(tmp_path / "accum") == pytest.approx(_losses(tmp_path / "big"), abs=1e-5)


def test_compiled_training_matches_eager(tiny_config, tmp_path):
    eager = tmp_path / "eager"
    compiled = tmp_path / "compiled"
    pretrain(tiny_config("train.max_steps=3", "train.visualize_images=0", output=eager))
    trainer = Pretrainer(
        tiny_config("train.max_steps=3", "train.visualize_images=0", "train.compile=true", output=compiled)
    )
    assert trainer.step_module._orig_mod is trainer.model  # what the steps call is the torch.compile wrapper
    trainer.run()
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tiny_config, tmp_path):
    pretrain(tiny_config("train.max_steps=2"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.safetensors"
    before = checkpoint.read_bytes()
    trainer = Pretrainer(tiny_config(), resume="auto")
    with torch.no_grad():
        trainer.model.encoder.cls_token.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*last good checkpoint is .*last.safetensors"):
        trainer.run()
    assert checkpoint.read_bytes() == before


def test_cli_pretrain_then_visualize(tmp_path, capsys):
    from tests.conftest import tiny_overrides

    assert main(["pretrain", *tiny_overrides(tmp_path / "cli", "train.epochs=1")]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint:" in printed and "reconstructions:" in printed
    photo = tmp_path / "photo.png"
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(photo)
    (tmp_path / "broken.png").write_bytes(b"broken")
    picture = tmp_path / "viz.png"
    code = main(
        [
            "visualize",
            "--checkpoint",
            str(tmp_path / "cli" / "checkpoints" / "last.safetensors"),
            "--images",
            str(photo),
            str(tmp_path / "broken.png"),
            "--output",
            str(picture),
        ]
    )
    assert code == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    with Image.open(picture) as image:
        assert image.size == (4 * 64 + 5 * 2, 64 + 2 * 2)


def test_folder_data_from_the_cli(tmp_path, capsys):
    from PIL import Image
    from skimage import data

    from tests.conftest import tiny_overrides

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(images / f"{name}.jpg")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    overrides = [o for o in tiny_overrides(tmp_path / "folder", "train.epochs=1") if "source" not in o]
    code = main(["pretrain", "--data", str(images), *overrides, "data.samples_per_epoch=null", "train.batch_size=5"])
    assert code == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_grayscale_fashion_mnist_pretraining(tiny_config):
    config = tiny_config(
        "data.source=fashion_mnist",
        "data.in_chans=1",
        "data.mean=[0.286]",
        "data.std=[0.353]",
        "data.img_size=32",
        "model.args.patch_size=8",
        "train.epochs=1",
    )
    summary = pretrain(config)
    assert summary.steps == 4 and math.isfinite(summary.last_loss)


def test_cli_resume_flag_is_not_confused_with_overrides(tmp_path):
    from tests.conftest import tiny_overrides

    output = tmp_path / "resumed"
    assert main(["pretrain", *tiny_overrides(output, "train.max_steps=2")]) == 0
    assert main(["pretrain", "--resume", *tiny_overrides(output, "train.max_steps=5")]) == 0
    assert [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert main(["pretrain", "--resume-from", str(tmp_path / "missing.safetensors"), *tiny_overrides(output)]) == 2


def test_bf16_autocast_and_gradient_clipping_run(tiny_config):
    summary = pretrain(tiny_config("train.precision=bf16", "optim.clip_grad=0.5", "train.max_steps=2"))
    assert summary.steps == 2 and math.isfinite(summary.last_loss)


@pytest.mark.parametrize(
    "config, extra, columns",
    [
        pytest.param("convmae/convmae_tiny_samples.yaml", "model.args.masking=block", 4, id="convmae-block"),
        pytest.param("convmae/convmae_tiny_samples.yaml", "model.args.masking=random", 4, id="convmae-random"),
        pytest.param("mixmae/mixmae_swin_tiny_samples.yaml", "model.args.mixing=pair", 5, id="mixmae-pair"),
        pytest.param(
            "localmim/localmim_vit_tiny_samples.yaml", "model.args.target=pixels", 4, id="localmim-vit-pixels"
        ),
        pytest.param("localmim/localmim_convvit_tiny_samples.yaml", "model.args.target=hog", 2, id="localmim-convvit"),
        pytest.param("localmim/localmim_swin_tiny_samples.yaml", "model.args.target=hog", 2, id="localmim-swin"),
        pytest.param("mixmae/mixmae_swin_tiny_samples.yaml", "model.args.fill=zero", 3, id="mixmae-zero-fill"),
        pytest.param("mixmae/mixmae_vit_tiny_samples.yaml", "model.args.separation=mix_embedding", 5, id="mixmae-vit"),
        pytest.param("mrmae/mrmae_vit_tiny_samples.yaml", "model.args.teacher.weights={teacher}", 4, id="mrmae"),
        pytest.param("mrmae/mrmcmae_tiny_samples.yaml", "model.args.teacher.weights={teacher}", 4, id="mrmcmae"),
    ],
)
def test_tiny_methods_pretrain_from_the_cli_and_draw_their_reconstructions(tmp_path, config, extra, columns):
    """Each method's shipped tiny config runs from the CLI; MixMAE's rows show the mixed input and both
    reconstructions (mixed | image A | reconstruction | image B | reconstruction). LocalMIM's HOG rows show
    original | masked; with pixel targets the finest tap's reconstruction and its pasted version follow. MR-MAE's
    teacher is a tiny MAE checkpoint the test writes."""
    from PIL import Image

    if "{teacher}" in extra:
        extra = extra.format(teacher=save_tiny_mae_checkpoint(tmp_path / "teacher.safetensors")[0])
    output = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        config,
        "--output",
        str(output),
        extra,
        "data.img_size=64",
        "data.samples_per_epoch=16",
        "data.num_workers=0",
        "train.epochs=2",
        "train.batch_size=8",
        "train.visualize_images=2",
    ]
    assert main(args) == 0
    losses = _losses(output)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    with Image.open(output / "reconstructions" / "epoch_0001.png") as image:
        assert image.size == (columns * 64 + (columns + 1) * 2, 2 * 64 + 3 * 2)
