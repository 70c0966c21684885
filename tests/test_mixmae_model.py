"""MixMAE behaviour: group isolation of masked self-attention, mixing modes, sizes, dense features."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

import mimkit
from mimkit.config_schema import ConfigError
from mimkit.masking_mix import kway_mix_mask, pair_mix_mask
from mimkit.official.mixmim import map_mixmim_key
from tests.parity_cases import parity_dir

SMALL = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), decoder_embed_dim=16, decoder_num_heads=2)
SMALL_VIT = dict(embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_num_heads=2)


def _model(**overrides):
    torch.manual_seed(0)
    return mimkit.create_model("mixmae_swin_tiny", **{**SMALL, **overrides}).eval()


def _vit_model(**overrides):
    torch.manual_seed(0)
    return mimkit.create_model("mixmae_vit_tiny_patch16", **{**SMALL_VIT, **overrides}).eval()


@pytest.mark.parametrize(
    "overrides, batch, size",
    [
        pytest.param({}, 4, (64, 96), id="pair"),
        pytest.param({"mixing": "kway", "num_images": 4}, 8, (128, 128), id="kway4"),
        pytest.param({"window_sizes": (3, 3, 3, 3)}, 2, (96, 96), id="padded-windows"),
        pytest.param({"mixing": "kway", "mask_token_share": 0.5}, 4, (128, 128), id="kway2-with-mask-tokens"),
        pytest.param({"vit": True}, 4, (64, 48), id="vit-pair"),
        pytest.param({"vit": True, "mixing": "kway", "num_images": 4}, 8, (64, 64), id="vit-kway4"),
    ],
)
def test_changing_the_other_images_of_a_mix_leaves_an_images_reconstruction_unchanged(overrides, batch, size):
    """Masked self-attention: a token only attends to tokens of its own image, so the branch that
    reconstructs image 0 from mixed input 0 cannot see any other image."""
    overrides = dict(overrides)
    model = _vit_model(**overrides) if overrides.pop("vit", False) else _model(**overrides)
    images = torch.randn(batch, 3, *size)
    noise = model.sample_noise(batch, size, torch.Generator().manual_seed(2))
    changed = images.clone()
    changed[1:] = torch.randn_like(changed[1:]) * 3
    with torch.no_grad():
        before, after = model(images, noise=noise), model(changed, noise=noise)
    assert before["mix_sources"][0, 0] == 0
    assert torch.equal(before["x_rec"][0], after["x_rec"][0])
    assert not torch.equal(before["x_rec"][1], after["x_rec"][1])


def test_pair_mixing_follows_the_authors_code():
    noise = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])
    mix = pair_mix_mask(noise, batch_size=4, mask_ratio=0.5)
    assert mix.sources.tolist() == [[0, 3], [1, 2], [2, 1], [3, 0]]
    assert mix.labels.tolist() == [[0, 1, 0, 1, 0]]  # the int(5 * 0.5) = 2 smallest noise values take the partner


def test_kway_mixing_gives_each_image_a_near_equal_share():
    mix = kway_mix_mask(torch.rand(3, 49, generator=torch.Generator().manual_seed(0)), num_images=4)
    assert mix.sources.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    counts = torch.stack([(mix.labels == k).sum(dim=1) for k in range(4)], dim=1)
    assert counts.min() >= 12 and counts.max() <= 13


def test_pair_mode_reconstructs_every_region_once_and_kway_the_hidden_ones():
    images = torch.randn(4, 3, 64, 64)
    pair = _model()(images)
    assert pair["pred"].shape == (4, 4, 32 * 32 * 3) and pair["x_rec"].shape == (8, 4, 3072)
    assert pair["mask"].shape == (4, 4) and pair["mask"].sum().item() == 4 * 2
    kway = _model(mixing="kway", num_images=4)(images)
    assert kway["x_rec"].shape == (4, 4, 3072)  # one mixed input of 4 images, one branch each
    assert torch.equal(kway["mask"].sum(dim=1), torch.full((4,), 3.0))  # each image keeps 1 of 4 regions


def test_feature_maps_feed_a_feature_pyramid_at_a_non_square_size():
    model = _model()
    maps = model.encoder_module().feature_maps(torch.randn(1, 3, 96, 160))
    assert [tuple(m.shape) for m in maps] == [(1, 8, 24, 40), (1, 16, 12, 20), (1, 32, 6, 10), (1, 64, 3, 5)]
    pyramid = FeaturePyramidNetwork([8, 16, 32, 64], out_channels=8)({str(i): m for i, m in enumerate(maps)})
    assert [tuple(p.shape[-2:]) for p in pyramid.values()] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def _layout():
    path = parity_dir() / "mixmim" / "base_state_dict_layout.json"
    if not path.is_file():
        pytest.skip(f"no parity layout at {path}")
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "name, variant",
    [("mixmae_swin_base_w14", None), ("mixmae_swin_large_w14", "large"), ("mixmae_swin_huge_w14", "huge")],
)
def test_parameters_equal_the_authors_code(name, variant):
    """Every official key maps onto a parameter of the same size; trainable counts are equal (the official
    totals also hold the fixed sin-cos tables, recomputed by mimkit)."""
    layout = _layout()
    spec = layout["base"] if variant is None else layout["other_variants"][variant]
    with torch.device("meta"):
        model = mimkit.create_model(name)
    params = dict(model.named_parameters())
    mapped = {}
    for entry in spec["state_dict"]:
        target = map_mixmim_key(entry["key"])
        if target is not None:
            mapped[target] = torch.Size(entry["shape"]).numel()
    assert set(mapped) == set(params)
    assert all(params[key].numel() == size for key, size in mapped.items())
    assert sum(p.numel() for p in params.values()) == spec["params_trainable"]


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="not divisible by the patch size 32"):
        _model()(torch.randn(2, 3, 48, 64))
    with pytest.raises(ValueError, match="batch divisible by num_images=4"):
        _model(mixing="kway", num_images=4)(torch.randn(6, 3, 64, 64))
    with pytest.raises(ConfigError, match="mixes exactly 2 images"):
        mimkit.create_model("mixmae_swin_tiny", num_images=3)
    with pytest.raises(ConfigError, match="model.mixing"):
        mimkit.create_model("mixmae_swin_tiny", mixing="triple")
    with pytest.raises(ConfigError, match="mask_token_share needs mixing='kway'"):
        mimkit.create_model("mixmae_swin_tiny", mask_token_share=0.5)
    with pytest.raises(ConfigError, match="model.fill"):
        mimkit.create_model("mixmae_vit_tiny_patch16", fill="noise")
    with pytest.raises(ConfigError, match="model.zoom_factor.: must be above 1"):
        mimkit.create_model("mixmae_swin_tiny", fill="zoomin", zoom_factor=1.0)


@pytest.mark.parametrize("build", [_model, _vit_model], ids=["swin", "vit"])
@pytest.mark.parametrize("separation", ["mix_embedding", "none"])
def test_without_masked_attention_the_other_image_reaches_the_reconstruction(build, separation):
    """Table 10's alternatives let tokens attend across images, so the isolation above no longer holds."""
    model = build(separation=separation)
    images = torch.randn(2, 3, 64, 64)
    noise = model.sample_noise(2, (64, 64), torch.Generator().manual_seed(2))
    changed = images.clone()
    changed[1] = torch.randn_like(changed[1])
    with torch.no_grad():
        assert not torch.equal(model(images, noise=noise)["x_rec"][0], model(changed, noise=noise)["x_rec"][0])


def test_mix_embedding_adds_a_learned_vector_per_image_group_at_every_stage():
    model = _model(separation="mix_embedding", mixing="kway", num_images=3)
    assert [tuple(p.shape) for p in model.mix_embed] == [(3, 8), (3, 16), (3, 32), (3, 64)]
    images = torch.randn(3, 3, 64, 64)
    noise = model.sample_noise(3, (64, 64), torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(images, noise=noise)["latent"]
        model.mix_embed[2].add_(1.0)
        assert not torch.equal(before, model(images, noise=noise)["latent"])
    assert not hasattr(_model(), "mix_embed")


def _region_pixels(images, region=32):
    from mimkit.patches import patchify

    return patchify(images, region)


@pytest.mark.parametrize("fill", ["zero", "learnable"])
def test_zero_and_learnable_fills_hide_the_pixels_of_the_filled_regions(fill):
    """The encoder input at a filled region is a constant token, so the pixels there cannot reach the latent."""
    model = _model(fill=fill)
    images = torch.randn(2, 3, 64, 96)
    noise = model.sample_noise(2, (64, 96), torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images, noise=noise)
        filled = out["token_filled"]
        hidden_pixels = filled.float().reshape(2, 1, 2, 3).repeat_interleave(32, 2).repeat_interleave(32, 3)
        again = model(images + 5 * hidden_pixels, noise=noise)
    assert filled.sum(dim=1).tolist() == [3, 3]
    assert torch.equal(out["latent"], again["latent"])
    assert out["x_rec"].shape == (2, 6, 3072) and torch.equal(out["mask"], filled.float())
    assert torch.isfinite(out["loss"])


def test_shuffle_fill_permutes_the_hidden_regions_of_the_same_image():
    model = _model(fill="shuffle", mask_ratio=0.75)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = model(images, noise=model.sample_noise(2, (128, 128), torch.Generator().manual_seed(3)))
    original, shown, hidden = _region_pixels(images), _region_pixels(out["inputs"]), out["mask"].bool()
    assert torch.equal(shown[~hidden], original[~hidden])
    for b in range(2):
        hidden_regions = original[b][hidden[b]]
        assert torch.equal(shown[b][hidden[b]].sort(dim=0).values, hidden_regions.sort(dim=0).values)
        assert not torch.equal(shown[b][hidden[b]], hidden_regions)


def test_zoomin_fill_takes_the_hidden_regions_from_a_zoomed_in_crop():
    from mimkit.mix_inputs import zoomed_crops

    model = _model(fill="zoomin", zoom_factor=1.5)
    images = torch.randn(2, 3, 64, 64)
    noise = model.sample_noise(2, (64, 64), torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(images, noise=noise)
    crops = zoomed_crops(images, noise[:, 1], 1.5)
    assert crops.shape == images.shape
    shown, hidden = _region_pixels(out["inputs"]), out["mask"].bool()
    assert torch.equal(shown[hidden], _region_pixels(crops)[hidden])
    assert torch.equal(shown[~hidden], _region_pixels(images)[~hidden])


def test_mask_token_share_shows_the_mask_token_in_that_share_of_regions():
    mix = kway_mix_mask(torch.rand(2, 49, generator=torch.Generator().manual_seed(0)), 2, mask_token_share=0.5)
    assert mix.filled.sum(dim=1).tolist() == [24, 24]
    hidden = mix.branch_masks()
    assert (hidden.sum(dim=-1) >= 36).all()  # each image shows 12 or 13 of 49 regions: mask ratio ~0.75
    assert torch.equal(hidden.prod(dim=0).bool(), mix.filled)  # [MASK] regions are hidden for every image


def test_single_reconstruction_decodes_only_the_first_image_of_each_mix():
    model = _model(mixing="kway", num_images=2, dual_reconstruction=False)
    out = model(torch.randn(4, 3, 64, 64))
    assert out["x_rec"].shape == (2, 4, 3072) and out["mix_sources"].tolist() == [[0], [2]]
    assert out["mask"][[1, 3]].sum() == 0 and out["mask"][[0, 2]].sum() == 4


def test_vit_variant_has_maes_parameters_and_its_encoder_is_a_plain_vit():
    with torch.device("meta"):
        mix, mae = mimkit.create_model("mixmae_vit_base_patch16"), mimkit.create_model("mae_vit_base_patch16")
    assert sum(p.numel() for p in mix.parameters()) == sum(p.numel() for p in mae.parameters())
    model = _vit_model()
    assert model.encoder_module()(torch.randn(1, 3, 32, 48)).shape == (1, 1 + 6, 16)


@pytest.mark.parametrize("name", ["mixmae_swin_tiny", "mixmae_vit_tiny_patch16"])
def test_bf16_autocast_trains_and_stays_near_the_float32_loss(name):
    """Un-mixing adds bf16 predictions into bf16 sums: a float mask factor must not promote them (index_add_ needs
    one dtype)."""
    model = mimkit.create_model(name, img_size=32)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = model.sample_noise(4, (32, 32), torch.Generator().manual_seed(1))
    full = model(images, noise=noise)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(images, noise=noise)["loss"]
    half.backward()
    assert torch.isfinite(half) and abs(half.item() - full.item()) <= 2e-2 * full.item()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
