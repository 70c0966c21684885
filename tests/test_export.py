"""Export to timm and multi-scale features: the exported encoder gives identical outputs through timm, as a
classifier and as a ``features_only`` backbone, and every encoder feeds a feature pyramid at odd sizes."""

from __future__ import annotations

import pytest
import timm
import timm.optim
import torch
from timm.data import resolve_data_config
from timm.models import group_parameters
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

import mimkit
from mimkit.backbones.convvit_detection import ConvViTDetectionEncoder
from mimkit.cli import main
from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.engine.optim import layer_decay_param_groups
from mimkit.engine.strategy import training_blocks
from mimkit.errors import MimkitError
from mimkit.eval.classifier import Classifier
from mimkit.eval.loading import load_encoder
from mimkit.heads.simple_pyramid import SimpleFeaturePyramid
from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import tiny_overrides
from tests.transfer_files import pretrain_checkpoint

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
    data = {"img_size": model.config.img_size, "in_chans": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    record = {"model": {"name": name, "args": overrides}, "resolved_model": to_dict(model.config), "data": data}
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


def test_an_exported_encoder_carries_its_input_format_into_timm(tmp_path, capsys):
    """A 1-channel 64-px run with its own normalization: timm builds the encoder from the file alone (no size
    arguments) and resolves that input, not timm's 3 x 224 ImageNet default."""
    pre = tmp_path / "pre"
    overrides = tiny_overrides(pre, "data.in_chans=1", "data.mean=[0.3]", "data.std=[0.2]")
    checkpoint = pretrain_checkpoint(pre, *overrides)
    exported = tmp_path / "encoder.safetensors"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(exported)]) == 0
    assert capsys.readouterr().out.startswith("encoder written to")
    model = timm.create_model(
        "mimkit_vit_base_patch16", pretrained=True, pretrained_cfg_overlay=dict(file=str(exported))
    ).eval()
    config = resolve_data_config({}, model=model)
    assert (config["input_size"], config["mean"], config["std"]) == ((1, 64, 64), (0.3,), (0.2,))
    assert model.pretrained_cfg["num_classes"] == 0 and model.num_classes == 0
    encoder = load_encoder("mae_vit_tiny_patch16", checkpoint=checkpoint).eval()
    images = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), model.fc_norm(encoder.pooled_features(images)))
    with pytest.raises(MimkitError, match="holds a 'mimkit_vit_base_patch16' model"):
        timm.create_model("mimkit_vit_small_patch16", pretrained=True, pretrained_cfg_overlay=dict(file=str(exported)))


HOOK_CASES = [
    pytest.param("mimkit_vit_tiny_patch16", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}, id="vit"),
    pytest.param("mimkit_convvit_tiny", {"img_size": 32}, id="convvit"),
    pytest.param("mimkit_swin_tiny", {"img_size": 64}, id="swin"),
]


@pytest.mark.parametrize("name, fields", HOOK_CASES)
def test_grad_checkpointing_recomputes_blocks_and_changes_nothing(name, fields):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **fields)
    images = torch.randn(2, 3, fields["img_size"], fields["img_size"])
    first_block = training_blocks(model.encoder)[0]
    calls = []
    next(m for m in first_block.modules() if isinstance(m, nn.Linear)).register_forward_hook(lambda *_: calls.append(1))

    def loss_and_gradients():
        calls.clear()
        model.zero_grad()
        loss = model(images).square().sum()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain = loss_and_gradients()
    model.set_grad_checkpointing(enable=True)
    checkpointed = loss_and_gradients()
    model.set_grad_checkpointing(enable=True)  # twice: still one recomputation
    twice = loss_and_gradients()
    model.set_grad_checkpointing(enable=False)
    off = loss_and_gradients()
    assert (plain[2], checkpointed[2], twice[2], off[2]) == (1, 2, 2, 1)
    assert checkpointed[0] == pytest.approx(plain[0], rel=1e-6) and plain[1].keys() == checkpointed[1].keys()
    assert all(torch.allclose(plain[1][k], checkpointed[1][k], atol=1e-6) for k in plain[1])


@pytest.mark.parametrize("name, fields", HOOK_CASES)
def test_timms_optimizer_factory_gets_mimkits_layer_decay_and_weight_decay_rules(name, fields):
    """``create_optimizer_v2(layer_decay=)`` through the timm model's ``group_matcher`` gives every parameter the lr
    scale mimkit's fine-tuning gives it (stem lowest, blocks in running order, head 1); ``no_weight_decay`` names
    the ViT's class token and the Swin's relative position tables, besides the 1-D norms and biases."""
    model = timm.create_model(name, num_classes=3, **fields)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}

    reference = Classifier(model.encoder, 3)
    expected = {}
    for group in layer_decay_param_groups(reference, weight_decay=0.05, layer_decay=0.5):
        members = {id(p) for p in group["params"]}
        expected.update({n: group["lr_scale"] for n, p in reference.named_parameters() if id(p) in members})
    assert scale == expected
    stem = [v for n, v in scale.items() if n.startswith("encoder.patch_embed")]
    assert min(stem) == min(scale.values()) < 1 and scale["head.weight"] == 1
    block_scales = [scale[f"encoder.{n}"] for n, _ in model.encoder.named_parameters() if ".blocks" in f".{n}"]
    assert block_scales == sorted(block_scales)

    no_decay = model.no_weight_decay()
    expected_no_decay = {
        "vit": {"encoder.cls_token"},
        "convvit": set(),
        "swin": {n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")},
    }[name.split("_")[1]]
    assert no_decay == expected_no_decay
    one_dimensional = {n for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad}
    assert {n for n, d in decay.items() if d == 0} == no_decay | one_dimensional
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == {"vit": 4, "convvit": 5, "swin": 6}[name.split("_")[1]]  # stem, blocks or stages, head
