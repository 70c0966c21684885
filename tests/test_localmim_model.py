"""LocalMIM behaviour: sizes against the authors' code, no leak from masked pixels, gradient isolation, HOG and
pixel targets, ablation options and errors."""

from __future__ import annotations

import math

import pytest
import torch

import mimkit
from mimkit.config_schema import ConfigError
from mimkit.official.localmim import map_localmim_key
from mimkit.targets.hog import HOGTarget
from mimkit.targets.pixels import pixel_target
from tests.parity_cases import assert_official_keys_map_onto_parameters, state_dict_layout

SMALL = {
    "vit": ("localmim_vit_tiny", dict(embed_dim=32, depth=8, num_heads=2, decoder_embed_dim=16, decoder_num_heads=2)),
    "convvit": ("localmim_convvit_tiny", dict(embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2)),
    "swin": ("localmim_swin_tiny", dict(embed_dim=8, num_heads=(1, 2, 2, 4), decoder_embed_dim=16)),
}
BACKBONES = list(SMALL)


def _model(backbone: str, **overrides):
    name, small = SMALL[backbone]
    torch.manual_seed(0)
    return mimkit.create_model(name, **{"img_size": 64, **small, **overrides}).eval()


def _masked_pixels(model, noise, size):
    mask = model(torch.zeros(1, 3, *size), noise=noise)["mask"]
    unit = model.config.mask_unit
    grid = (size[0] // unit, size[1] // unit)
    return mask.reshape(1, 1, *grid).repeat_interleave(unit, 2).repeat_interleave(unit, 3).bool()


@pytest.mark.parametrize("fusion", [False, True], ids=["local", "fusion"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_masked_pixels_cannot_change_any_prediction(backbone, fusion):
    """Every tap's decoder reads only visible features and mask tokens, so rewriting the masked pixels changes
    no prediction (only the targets), while rewriting the visible pixels does. The same holds for the fusion
    baseline, whose projections never mix masked and visible regions."""
    model = _model(backbone, fusion=fusion)
    size = (64, 96)
    images = torch.randn(1, 3, *size)
    noise = model.sample_noise(1, size, torch.Generator().manual_seed(3))
    masked = _masked_pixels(model, noise, size)
    changed = torch.where(masked, torch.randn_like(images) * 5, images)
    visible_changed = images.clone()
    visible_changed[..., ~masked[0, 0]] += 1.0
    with torch.no_grad():
        before, after, other = (model(x, noise=noise) for x in (images, changed, visible_changed))
    for k in range(len(model.decoded_taps)):
        assert torch.equal(before[f"pred{k}"], after[f"pred{k}"]), k
        assert not torch.equal(before[f"pred{k}"], other[f"pred{k}"]), k
    assert not torch.equal(before["target0"], after["target0"])


ISOLATION = {
    # backbone: (tap whose loss is used, parameter prefixes it must train, prefixes it must not reach)
    "vit": (
        1,
        ["encoder.blocks.2.", "encoder.blocks.3.", "tap_norms.1."],
        ["encoder.blocks.1.", "encoder.patch_embed"],
    ),
    "convvit": (1, ["encoder.blocks2.", "encoder.patch_embed2."], ["encoder.blocks1.", "encoder.patch_embed1."]),
    "swin": (1, ["encoder.layers.1.", "tap_norms.1."], ["encoder.layers.0.", "encoder.patch_embed."]),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_isolation_stops_gradients_below_the_previous_tap(backbone):
    """Table 5: with ``gradient_isolation`` a tap's loss trains only the layers since the previous tap; without
    it the same loss reaches the input layers. The total loss still trains every parameter."""
    tap, reached, unreached = ISOLATION[backbone]
    images = torch.randn(2, 3, 64, 64)
    for isolate in (True, False):
        model = _model(backbone, gradient_isolation=isolate).train()
        model(images)[f"loss_tap{tap}"].backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        for prefix in reached:
            assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix
        for prefix in unreached:
            touched = [n for n, g in grads.items() if n.startswith(prefix) and g is not None and g.abs().sum() > 0]
            assert (not touched) if isolate else touched, (prefix, isolate)
    model = _model(backbone, gradient_isolation=True).train()
    model(images)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name, variant",
    [("localmim_vit_base", None), ("localmim_vit_small", "small"), ("localmim_vit_large", "large")],
)
def test_parameters_equal_the_authors_code(name, variant):
    """Every official key maps onto a parameter of the same size; trainable counts are equal (the official
    totals also hold the fixed sin-cos tables and Sobel kernels, recomputed by mimkit). The authors' factories
    use 9 HOG bins."""
    layout = state_dict_layout("localmim")
    spec = layout["base"] if variant is None else layout["other_variants"][variant]
    with torch.device("meta"):
        model = mimkit.create_model(name, hog_nbins=spec["constructor_args"]["hog_nbins"])
    assert_official_keys_map_onto_parameters(spec, model, map_localmim_key)
    assert sum(p.numel() for p in model.parameters()) == spec["params_trainable"]


def _edge(direction: str) -> torch.Tensor:
    image = torch.zeros(1, 3, 32, 32)
    if direction == "horizontal":
        image[..., :16, :] = 1.0  # bright top, dark bottom
    else:
        image[..., :, :16] = 1.0  # bright left, dark right
    return image


@pytest.mark.parametrize("direction, expected_bin", [("horizontal", 0), ("vertical", 9)])
def test_a_straight_edge_falls_into_its_orientation_bin(direction, expected_bin):
    """A horizontal edge has a purely vertical gradient: orientation 0, bin 0. A vertical edge has orientation
    90 degrees, bin 9 of 18. The cells on the edge hold a unit vector in that bin for every colour channel;
    flat cells hold zeros."""
    (target,) = HOGTarget(nbins=18, num_targets=1)(_edge(direction), cells=[8])
    cells = target.reshape(4, 4, 3, 18)
    edge = cells[1:3, :] if direction == "horizontal" else cells[:, 1:3]
    flat = cells[0, :] if direction == "horizontal" else cells[:, 0]
    expected = torch.zeros(18)
    expected[expected_bin] = 1.0
    assert torch.allclose(edge, expected.expand_as(edge))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_hog_is_contrast_invariant_and_each_cell_is_unit_length():
    """Scaling the contrast (by 4, so every float operation scales exactly) leaves the targets unchanged:
    orientations are scale-free and each cell's histogram is L2-normalised per colour channel. bf16 autocast
    does not touch them (they are computed in float32)."""
    images = torch.randn(2, 3, 32, 48)
    targets = HOGTarget(nbins=18, num_targets=2)(images, cells=[4, 16])
    assert [tuple(t.shape) for t in targets] == [(2, 8 * 12, 54), (2, 2 * 3, 54)]
    for target, scaled in zip(targets, HOGTarget(nbins=18, num_targets=2)(images * 4.0, cells=[4, 16]), strict=True):
        assert torch.equal(target, scaled)
        norms = target.reshape(target.shape[0], target.shape[1], 3, 18).norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = HOGTarget(nbins=18, num_targets=2)(images, cells=[4, 16])
    assert all(torch.equal(a, b) for a, b in zip(targets, under_autocast, strict=True))


def test_normalized_pixel_targets_have_zero_mean_and_unit_unbiased_variance_per_region():
    images = torch.rand(2, 3, 32, 32)
    target = pixel_target(images, 8, normalize=True)
    assert target.shape == (2, 16, 8 * 8 * 3)
    assert torch.allclose(target.mean(dim=-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(dim=-1, unbiased=True), torch.ones(2, 16), atol=1e-3)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pixel_targets_and_region_sizes_follow_the_config(backbone):
    """Targets of ``target_cells`` regions, predictions to match, and the coarse-to-fine order of Table 4f."""
    model = _model(backbone, target="pixels")
    out = model(torch.randn(2, 3, 64, 64))
    for k, cell in enumerate(model.cells):
        assert out[f"pred{k}"].shape == (2, (64 // cell) ** 2, cell * cell * 3)
        assert out[f"target{k}"].shape == out[f"pred{k}"].shape
    assert out["loss"].item() == pytest.approx(
        sum(out[f"loss_tap{k}"].item() for k in range(len(model.taps))), rel=1e-6
    )
    reverse = _model("vit", target_cells=(32, 16, 8, 4))
    assert [tuple(reverse(torch.randn(1, 3, 64, 64))[f"pred{k}"].shape[1:]) for k in range(4)] == [
        (4, 54),
        (16, 54),
        (64, 54),
        (256, 54),
    ]


def test_global_reconstruction_and_tap_weights():
    """Table 6's global multi-scale variant taps the last block four times; weights scale each tap's loss."""
    model = _model("vit", taps=(7, 7, 7, 7), tap_weights=(1.0, 0.5, 0.0, 2.0))
    out = model(torch.randn(2, 3, 64, 64))
    expected = out["loss_tap0"] + 0.5 * out["loss_tap1"] + 2.0 * out["loss_tap3"]
    assert math.isclose(out["loss"].item(), expected.item(), rel_tol=1e-6)
    single = _model("vit", taps=(7,), target_cells=(16,))
    assert single(torch.randn(1, 3, 64, 64))["pred0"].shape == (1, 16, 54)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fusion_baseline_decodes_the_fused_last_tap_only(backbone):
    """Table 7: lower taps are projected onto the last tap, one decoder predicts its own-scale target, and
    every parameter (the projections included) is trained."""
    model = _model(backbone, fusion=True).train()
    out = model(torch.randn(2, 3, 64, 64))
    last_stride = model.config.tap_stride(model.taps[-1])
    assert model.cells == (last_stride,) and len(model.decoders) == 1 and "loss_tap1" not in out
    assert out["pred0"].shape == (2, (64 // last_stride) ** 2, 54)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(model.fusion.proj) == len(model.taps) - 1


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="not divisible by the patch size 32"):
        _model("vit")(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="noise must have shape"):
        _model("vit")(torch.randn(1, 3, 64, 64), noise=torch.rand(1, 10))
    with pytest.raises(ConfigError, match=r"taps: block index 8 does not exist \(0-based indices 0..7\)"):
        _model("vit", taps=(1, 3, 5, 8))
    with pytest.raises(ConfigError, match="end with the last block"):
        _model("vit", taps=(1, 3, 5, 6))
    with pytest.raises(ConfigError, match="stage index 4 does not exist"):
        _model("swin", taps=(0, 4))
    with pytest.raises(ConfigError, match="target_cells must be given for 2 taps"):
        _model("vit", taps=(3, 7))
    with pytest.raises(ConfigError, match="12 px regions cannot be reached"):
        _model("vit", target_cells=(4, 8, 12, 32))
    with pytest.raises(ConfigError, match="img_size=80 must be a multiple of 32"):
        _model("vit", img_size=80)
    with pytest.raises(ConfigError, match="model.target"):
        _model("vit", target="sift")
    with pytest.raises(ConfigError, match="tap_weights"):
        _model("convvit", tap_weights=(1.0, 1.0))
    with pytest.raises(ConfigError, match="the last one only with fusion"):
        _model("swin", fusion=True, target_cells=(8, 16, 32, 32))
    with pytest.raises(ConfigError, match="fusion and gradient_isolation exclude each other"):
        _model("vit", fusion=True, gradient_isolation=True)
