"""Multi-scale backbones for detection and segmentation from every image encoder family (mimkit.dense.backbones)."""

from __future__ import annotations

import math

import pytest
import torch

import mimkit
from mimkit.backbones.swin_detection import resized_bias_table
from mimkit.config_schema import to_dict
from mimkit.dense.backbones import build_dense_backbone
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.errors import MimkitError
from mimkit.eval.loading import load_encoder

FAMILIES = ["mae_vit_tiny_patch16", "localmim_vit_tiny", "mixmae_swin_tiny", "convmae_tiny"]


def _encoder(name: str, **args) -> torch.nn.Module:
    torch.manual_seed(0)
    return mimkit.create_encoder(name, **args).eval()


@pytest.mark.parametrize("task", ["detect", "segment"])
@pytest.mark.parametrize("name", FAMILIES)
def test_four_maps_at_strides_4_to_32_on_non_square_images(name, task):
    """Both tasks, one and three input channels, two non-square sizes: maps at 1/4..1/32 with out_channels."""
    for in_chans, (height, width) in ((1, (96, 160)), (3, (128, 192))):
        backbone = build_dense_backbone(_encoder(name, in_chans=in_chans), task).eval()
        with torch.no_grad():
            maps = backbone(torch.randn(2, in_chans, height, width))
        assert [tuple(m.shape) for m in maps] == [
            (2, c, height // s, width // s) for c, s in zip(backbone.out_channels, (4, 8, 16, 32), strict=True)
        ]
        assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("task", ["detect", "segment"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_has_a_layer_and_every_trainable_one_gets_a_gradient(name, task):
    """For layer-wise lr decay and DDP without find_unused_parameters: encoder blocks keep their encoder's layer,
    added parts come last, and a backward pass reaches every trainable parameter."""
    encoder = _encoder(name)
    backbone = build_dense_backbone(encoder, task)
    block = next(n for n, _ in backbone.named_parameters() if ".blocks" in n or n.startswith("encoder.blocks"))
    assert backbone.layer_ordinal(block) == encoder.layer_ordinal(block.removeprefix("encoder."))
    assert all(math.isfinite(backbone.layer_ordinal(n)[0]) for n, _ in backbone.named_parameters() if "embed" in n)
    added = [n for n, _ in backbone.named_parameters() if not n.startswith("encoder.")]
    assert all(backbone.layer_ordinal(n) == (math.inf,) for n in added)
    maps = backbone(torch.randn(2, 3, 64, 96))
    sum(m.square().mean() for m in maps).backward()
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == ({"encoder.norm.weight", "encoder.norm.bias"} if name.startswith("convmae") else set())
    assert not any("cls_token" in n for n, _ in backbone.named_parameters())


def test_vit_on_one_window_computes_what_the_pretrained_blocks_compute_without_the_class_token():
    """224 px is a 14x14 grid, one ViTDet window: the windowed backbone's 1/16 map equals the pretrained patch
    embedding, blocks and final norm run globally on the patch tokens (new bias tables start at zero)."""
    encoder = _encoder("mae_vit_tiny_patch16")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x = encoder.patch_embed(images) + encoder.pos_embed((14, 14))[:, 1:]
        for block in encoder.blocks:
            x = block(x)
        expected = encoder.norm(x).transpose(1, 2).reshape(2, -1, 14, 14)
        sixteenth = build_dense_backbone(encoder, "detect").eval()(images)[2]
    assert (sixteenth - expected).abs().max().item() <= 1e-5


def test_swin_keeps_pretrained_windows_exactly_and_resized_tables_at_offset_zero():
    """With the pretrained window (8 in stages 1-3 of the tiny Swin) stages 1-3 compute what the pretrained encoder
    computes at any size; stage 4's table is resized (4 -> 8), which keeps the zero offset, all a 1x1 map sees."""
    encoder = _encoder("mixmae_swin_tiny")
    backbone = build_dense_backbone(encoder, "detect", window=8, global_blocks=()).eval()
    with torch.no_grad():
        for size in (32, 64):
            images = torch.randn(2, 3, size, size + 32)
            plain, dense = encoder.feature_maps(images), backbone(images)
            for stage in range(3):
                assert torch.equal(plain[stage], dense[stage])
        images = torch.randn(2, 3, 32, 32)
        last = encoder.norm(encoder.feature_maps(images)[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (backbone(images)[3] - last).abs().max().item() <= 1e-5
    block = backbone.encoder.layers[1].blocks[0]
    assert torch.equal(block.attn.qkv.weight, encoder.layers[1].blocks[0].attn.qkv.weight)


def test_swin_default_windows_follow_mixmae_detection_settings():
    """16x16 windows everywhere, twice that in the (scaled) global stage-3 block, tables resized to them."""
    backbone = build_dense_backbone(_encoder("mixmae_swin_tiny"), "segment")
    windows = [[b.window for b in layer.blocks] for layer in backbone.encoder.layers]
    assert windows == [[16], [16], [16, 32], [16]]
    table = backbone.encoder.layers[2].blocks[1].attn.relative_position_bias_table
    assert table.shape == (63 * 63, 4)


def test_bias_table_resize_keeps_the_centre_and_interpolates_smoothly():
    old = torch.randn(13 * 13, 2)
    assert torch.equal(resized_bias_table(old, 7), old)
    new = resized_bias_table(old, 16).reshape(31, 31, 2)
    assert torch.allclose(new[15, 15], old.reshape(13, 13, 2)[6, 6], atol=1e-6)
    constant = resized_bias_table(torch.full((13 * 13, 2), 0.5), 16)
    assert torch.allclose(constant, torch.full_like(constant, 0.5), atol=1e-6)
    ramp = torch.arange(13.0)[:, None].expand(13, 13).reshape(-1, 1)  # bias grows with the row offset
    stretched = resized_bias_table(ramp, 16).reshape(31, 31)
    assert (stretched[1:, 15] >= stretched[:-1, 15] - 1e-5).all() and stretched[0, 15] < stretched[-1, 15]


@pytest.mark.parametrize(
    ("name", "size", "local", "mixing"),
    [
        ("mae_vit_tiny_patch16", (224, 448), {"window": 14}, {"window": 14, "global_blocks": (0,)}),
        ("mixmae_swin_tiny", (64, 128), {"window": 8}, {"window": 32}),
    ],
)
def test_a_local_window_is_not_reached_from_another_window(name, size, local, mixing):
    """Changing pixels of the right half leaves the left half's tokens unchanged when no block attends across
    (ViT 1/16 map with two 14-token windows, no global block; Swin stage 1 with 8-token = 32 px windows); with a
    global block (ViT) or a window over the whole map (Swin) they do change."""
    height, width = size
    images = torch.randn(1, 3, height, width)
    changed = images.clone()
    changed[..., width // 2 :] += 1.0
    level = 2 if name.startswith("mae") else 0
    left = (width // 2) // (16 if level == 2 else 4)
    for options, reaches in ((local, False), (mixing, True)):
        options = {"global_blocks": (), **options}
        backbone = build_dense_backbone(_encoder(name), "detect", **options).eval()
        with torch.no_grad():
            before, after = backbone(images)[level], backbone(changed)[level]
        moved = (before - after).abs()
        assert moved[..., left:].amax() > 0
        assert (moved[..., :left].amax() > 0) == reaches


def test_vit_segmentation_taps_evenly_spaced_blocks_with_global_attention():
    backbone = build_dense_backbone(_encoder("mae_vit_tiny_patch16"), "segment")
    assert backbone.taps == (2, 5, 8, 11)
    assert backbone.encoder.global_blocks == frozenset(range(12)) and backbone.encoder.local_bias is None
    detect = build_dense_backbone(_encoder("mae_vit_tiny_patch16"), "detect").encoder
    assert detect.global_blocks == frozenset({2, 5, 8, 11}) and detect.window == 14


def test_vit_feature_blocks_choose_the_taps_and_drop_the_blocks_after_them():
    """LocalMIM's ADE20K setup taps blocks 2, 4, 10, 12 (1-based); taps that stop early leave no block without a
    gradient (DDP refuses such parameters) and no final norm after a block that pretraining did not norm."""
    backbone = build_dense_backbone(_encoder("mae_vit_tiny_patch16"), "segment", feature_blocks=[0, 1, 2, 3])
    assert backbone.taps == (0, 1, 2, 3) and len(backbone.encoder.blocks) == 4
    maps = backbone(torch.randn(1, 3, 64, 96))
    sum(m.sum() for m in maps).backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)
    with pytest.raises(MimkitError, match="feature_blocks"):
        build_dense_backbone(_encoder("mae_vit_tiny_patch16"), "segment", feature_blocks=[3, 1, 2, 5])
    with pytest.raises(MimkitError, match="feature_blocks"):
        build_dense_backbone(_encoder("convmae_tiny"), "segment", feature_blocks=[0])


def test_vit_with_14_pixel_patches_is_resampled_to_16():
    backbone = build_dense_backbone(_encoder("mae_vit_tiny_patch16", patch_size=14), "detect").eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_convvit_detect_uses_the_mcmae_variant_and_segment_the_global_encoder():
    detect = build_dense_backbone(_encoder("convmae_tiny"), "detect").encoder
    assert detect.window == 7 and detect.global_blocks == frozenset({0, 3}) and detect.shift_windows
    encoder = _encoder("convmae_tiny")
    segment = build_dense_backbone(encoder, "segment")
    assert segment.encoder is encoder


def test_loaded_weights_are_kept(tmp_path):
    """A mimkit pretraining checkpoint and an authors'-style encoder state dict load through load_encoder; the
    dense backbones hold those weights."""
    model = mimkit.create_model("convmae_tiny")
    record = {"model": {"name": "convmae_tiny", "args": {}}, "resolved_model": to_dict(model.config)}
    path = save_checkpoint(tmp_path / "pre.safetensors", model, record)
    backbone = build_dense_backbone(load_encoder("convmae_tiny", {}, path), "detect")
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(backbone.encoder.state_dict()[key], value)

    swin = mimkit.create_model("mixmae_swin_tiny")
    official = {k: v for k, v in swin.encoder.state_dict().items() if "relative_position_index" not in k}
    torch.save({"model": official}, tmp_path / "mixmim.pth")
    backbone = build_dense_backbone(load_encoder("mixmae_swin_tiny", {}, tmp_path / "mixmim.pth"), "detect")
    weights = backbone.encoder.state_dict()
    assert torch.equal(weights["layers.2.blocks.1.mlp.fc1.weight"], official["layers.2.blocks.1.mlp.fc1.weight"])
    table = official["layers.2.blocks.1.attn.relative_position_bias_table"]
    assert torch.equal(weights["layers.2.blocks.1.attn.relative_position_bias_table"], resized_bias_table(table, 32))


def test_encoders_without_a_dense_backbone_and_bad_options_fail_in_one_line():
    with pytest.raises(MimkitError, match="video encoders have no detection or segmentation backbone"):
        build_dense_backbone(mimkit.create_encoder("videoconvmae_tiny"), "detect")
    with pytest.raises(MimkitError, match="no dense backbone for a Linear"):
        build_dense_backbone(torch.nn.Linear(2, 2), "detect")
    with pytest.raises(MimkitError, match=r"global blocks \[12\] do not exist"):
        build_dense_backbone(_encoder("mae_vit_tiny_patch16"), "detect", global_blocks=(11, 12))
    with pytest.raises(MimkitError, match="at least 1 token"):
        build_dense_backbone(_encoder("mixmae_swin_tiny"), "segment", window=0)
    with pytest.raises(MimkitError, match="dense task must be one of"):
        build_dense_backbone(_encoder("convmae_tiny"), "classify")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_dense_backbone(_encoder("convmae_tiny"), "segment")(torch.randn(1, 3, 48, 64))
