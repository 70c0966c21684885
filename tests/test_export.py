"""Export to timm and multi-scale features: the exported encoder gives identical outputs through timm, as a
classifier and as a ``features_only`` backbone, and every encoder feeds a feature pyramid at odd sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from torchvision.ops import FeaturePyramidNetwork

import mimkit
from mimkit.backbones.convvit_detection import ConvViTDetectionEncoder
from mimkit.cli import main
from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.heads.simple_pyramid import SimpleFeaturePyramid

CASES = [
    pytest.param("mixmae_swin_tiny", {}, 64, id="swin"),
    pytest.param("convmae_tiny", {}, 32, id="convvit"),
    pytest.param("mae_vit_tiny_patch16", {"embed_dim": 32, "depth": 2, "num_heads": 2}, 32, id="vit-custom-size"),
    pytest.param("mixmae_vit_tiny_patch16", {"fill": "zero"}, 32, id="vit-from-mixmae"),
    pytest.param("localmim_swin_tiny", {}, 64, id="swin-from-localmim"),
]


def _pretraining_checkpoint(path, name, overrides):
    torch.manual_seed(0)
    model = mimkit.create_model(name, **overrides)
    record = {"model": {"name": name, "args": overrides}, "resolved_model": to_dict(model.config)}
    save_checkpoint(path, model, record)
    return model.encoder_module().eval()


@pytest.mark.parametrize("name, overrides, size", CASES)
def test_exported_encoder_round_trips_through_timm(tmp_path, capsys, name, overrides, size):
    encoder = _pretraining_checkpoint(tmp_path / "pre.safetensors", name, overrides)
    out = tmp_path / "encoder.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path / "pre.safetensors"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    timm_name = printed.split("timm.create_model('")[1].split("'")[0]
    from mimkit.export import timm_model_for

    _, fields = timm_model_for(name, to_dict(mimkit.create_model(name, **overrides).config))
    load = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), **fields)
    images = torch.randn(2, 3, size, size)

    with torch.no_grad():
        classifier = timm.create_model(timm_name, **load).eval()
        assert torch.equal(classifier.forward_features(images), encoder.pooled_features(images))
        assert timm.create_model(timm_name, num_classes=7, **load)(images).shape == (2, 7)
        backbone = timm.create_model(timm_name, features_only=True, **load).eval()
        maps, expected = backbone(images), encoder.feature_maps(images)
    assert len(maps) == len(expected) and all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
    assert backbone.feature_info.channels() == [m.shape[1] for m in expected]


@pytest.mark.parametrize("name", ["mixmae_swin_tiny", "convmae_tiny", "convmae_tiny_detection", "mae_vit_tiny_patch16"])
def test_every_encoder_feeds_a_feature_pyramid_at_a_non_square_size(name):
    """1/4 .. 1/32 maps at 96x160: Swin stages, ConvViT E1..E4 (also its windowed detection variant), ViT through
    the simple feature pyramid."""
    encoder = mimkit.create_model(name.removesuffix("_detection")).encoder_module().eval()
    if name.endswith("_detection"):
        encoder = ConvViTDetectionEncoder.from_encoder(encoder).eval()
    images = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        maps = encoder.feature_maps(images)
        if name.startswith("mae_"):
            maps = SimpleFeaturePyramid(encoder.embed_dim)(maps[-1])
        channels = [m.shape[1] for m in maps]
        pyramid = FeaturePyramidNetwork(channels, out_channels=16)({str(i): m for i, m in enumerate(maps)})
    assert [tuple(p.shape[-2:]) for p in pyramid.values()] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def test_export_refuses_a_file_that_is_not_a_mimkit_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(bogus), "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "not a readable mimkit checkpoint" in capsys.readouterr().err
