"""ConvMAE behaviour: leak-freedom of masked convolution, the ablation switches, sizes, dense features."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

import mimkit
from mimkit.config_schema import ConfigError
from mimkit.masking import random_masking
from mimkit.official.convmae import map_convmae_key
from mimkit.visualize import mask_to_pixels
from tests.parity_cases import assert_official_keys_map_onto_parameters, state_dict_layout

SMALL = dict(
    embed_dims=(8, 16, 32),
    depths=(1, 1, 2),
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


def _model(**overrides):
    torch.manual_seed(0)
    return mimkit.create_model("convmae_tiny", **{**SMALL, **overrides}).eval()


def _change_masked_pixels(images, mask):
    """Add large noise to every pixel under the mask (``mask`` on any grid of square cells)."""
    pixels = mask_to_pixels(mask, tuple(images.shape[-2:]))
    return images + 5 * torch.randn_like(images) * pixels


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="block-visible-only"),
        pytest.param({"skip_masked_regions": False}, id="block-dense"),
        pytest.param({"masking": "random"}, id="random-cells"),
        pytest.param({"multiscale_decoder": False, "kernel_size": 9}, id="no-fusion-k9"),
    ],
)
def test_masked_pixels_cannot_change_any_prediction(overrides):
    model = _model(**overrides)
    images = torch.randn(2, 3, 64, 96)
    noise = model.sample_noise(2, (64, 96), torch.Generator().manual_seed(1))
    mask = random_masking(noise, model.config.mask_ratio).mask
    changed = _change_masked_pixels(images, mask)
    with torch.no_grad():
        before, after = model(images, noise=noise), model(changed, noise=noise)
    assert not torch.equal(images, changed)
    assert torch.equal(before["mask"], mask)
    assert torch.equal(before["latent"], after["latent"])
    assert torch.equal(before["pred"], after["pred"])


def test_without_masked_convolution_masked_pixels_leak_into_visible_tokens():
    """Table 5's "no masked conv" ablation: the depthwise convs see masked pixels next to visible ones."""
    model = _model(masked_conv=False)
    images = torch.randn(2, 3, 64, 64)
    noise = model.sample_noise(2, (64, 64), torch.Generator().manual_seed(1))
    changed = _change_masked_pixels(images, random_masking(noise, 0.75).mask)
    with torch.no_grad():
        assert not torch.allclose(model(images, noise=noise)["latent"], model(changed, noise=noise)["latent"])


def test_visible_only_conv_stages_equal_the_dense_computation():
    """Skipping masked regions changes no number: float64 outputs and gradients of both paths agree."""
    images = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    noise = torch.rand(2, 15)
    results = []
    for skip in (True, False):
        model = _model(skip_masked_regions=skip).double()
        out = model(images, noise=noise)
        out["loss"].backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (sparse, sparse_grads), (dense, dense_grads) = results
    assert (sparse["pred"] - dense["pred"]).abs().max().item() < 1e-12
    assert abs(sparse["loss"].item() - dense["loss"].item()) < 1e-13
    for name, grad in sparse_grads.items():
        assert torch.allclose(grad, dense_grads[name], rtol=1e-9, atol=1e-13), name


def test_block_masking_runs_stage_3_on_visible_tokens_and_random_masking_on_all():
    images = torch.randn(2, 3, 64, 64)
    block = _model()(images)
    assert block["mask"].shape == (2, 16) and block["latent"].shape == (2, 4, 32)
    random = _model(masking="random")(images)
    assert random["mask"].shape == (2, 256)  # 4x4-pixel cells
    assert random["mask"].sum().item() == 2 * 192
    assert random["latent"].shape == (2, 16, 32)  # every stage-3 token kept
    assert random["pred"].shape == (2, 16, 768)


def test_ablation_switches_change_the_architecture():
    assert _model(kernel_size=7).encoder.blocks1[0].dwconv.weight.shape == (8, 1, 7, 7)
    no_fusion = _model(multiscale_decoder=False)
    assert no_fusion.fusion is None
    assert not any(name.startswith("fusion.") for name, _ in no_fusion.named_parameters())
    star = mimkit.model_config("convmae_base_star")
    assert star.mlp_ratios == (8.0, 8.0, 4.0) and star.resolved_decoder_mlp_ratio == 8.0
    assert mimkit.model_config("convmae_base", decoder_mlp_ratio=4.0).resolved_decoder_mlp_ratio == 4.0


def test_feature_maps_feed_a_feature_pyramid_at_a_non_square_size():
    model = _model()
    images = torch.randn(2, 3, 96, 160)
    maps = model.encoder.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 24, 40), (2, 16, 12, 20), (2, 32, 6, 10), (2, 32, 3, 5)]
    fpn = FeaturePyramidNetwork([8, 16, 32, 32], out_channels=16)
    pyramid = fpn({f"e{i}": m for i, m in enumerate(maps)})
    assert [tuple(p.shape[-2:]) for p in pyramid.values()] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def test_feature_maps_equal_the_visible_only_features_when_nothing_is_masked():
    model = _model()
    images = torch.randn(1, 3, 64, 64)
    ids_all = torch.randperm(16)[None]
    with torch.no_grad():
        e1 = model.encoder.feature_maps(images)[0]
        kept = model.encoder(images, ids_keep=ids_all)
    assert torch.allclose(kept.conv_layout.to_map(kept.stage1).permute(0, 3, 1, 2), e1, atol=1e-6)


def _layout():
    return state_dict_layout("convmae")


def test_every_official_base_key_maps_onto_a_parameter_of_the_same_size():
    with torch.device("meta"):
        model = mimkit.create_model("convmae_base")
    assert_official_keys_map_onto_parameters(_layout()["base"], model, map_convmae_key)


@pytest.mark.parametrize("name, variant", [("convmae_base", None), ("convmae_base_star", "base_star_mlp8_stage12")])
def test_parameter_counts_equal_the_authors_code(name, variant):
    """Trainable totals and per-part counts equal the official model's (the official totals also hold the
    fixed sin-cos tables, which mimkit recomputes instead of storing)."""
    layout = _layout()
    spec = layout["base"] if variant is None else layout["other_variants"][variant]
    groups = spec["groups"]
    with torch.device("meta"):
        model = mimkit.create_model(name)

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    encoder = model.encoder
    assert count(model) == spec["params_trainable"]
    assert count(encoder) == groups["encoder_kept_excl_fixed_pos_embed"]["params_total"]
    assert count(model.fusion) == groups["pretrain_only_multiscale_fusion_convs"]["params_total"]
    assert count(model.decoder) == groups["decoder"]["params_trainable"]
    assert count(encoder.patch_embed1, encoder.blocks1) == groups["stage1_conv"]["params_total"]
    assert count(encoder.patch_embed2, encoder.blocks2) == groups["stage2_conv"]["params_total"]
    stage3 = (encoder.patch_embed3, encoder.patch_embed4, encoder.blocks3, encoder.norm)
    assert count(*stage3) == groups["stage3_transformer"]["params_total"]


@pytest.mark.parametrize(
    "name, paper_millions",
    [
        ("convmae_small", 22),
        ("convmae_base", 84),
        ("convmae_base_star", 88),
        ("convmae_large", 322),
        ("convmae_huge", 666),
    ],
)
def test_encoder_sizes_are_close_to_table_7(name, paper_millions):
    with torch.device("meta"):
        model = mimkit.create_model(name)
    millions = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    assert millions == pytest.approx(paper_millions, rel=0.025)


def test_bad_inputs_get_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        model(torch.randn(1, 3, 56, 64))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.randn(1, 3, 64, 64), noise=torch.rand(1, 64))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="model.masking.*'block', 'random'"):
        mimkit.create_model("convmae_tiny", masking="grid")
    with pytest.raises(ConfigError, match="kernel_size must be a positive odd number"):
        mimkit.create_model("convmae_tiny", kernel_size=6)
    with pytest.raises(ConfigError, match="model.embed_dims"):
        mimkit.create_model("convmae_tiny", embed_dims=[8, 16])
