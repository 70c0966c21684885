"""MAE model behaviour: masking, leak-freedom, input sizes, named sizes and the create_model contract."""

from __future__ import annotations

import json

import pytest
import torch

import mimkit
from mimkit.config_schema import ConfigError
from mimkit.masking import random_masking
from mimkit.official.mae import map_mae_key
from mimkit.patches import patchify, unpatchify
from mimkit.pos_embed import sincos_2d
from tests.parity_cases import parity_dir

SMALL = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def test_random_masking_keeps_smallest_noise_in_noise_order():
    noise = torch.rand(3, 20, generator=torch.Generator().manual_seed(0))
    mask = random_masking(noise, 0.75)
    assert mask.num_visible == 5
    assert torch.equal(mask.ids_keep, torch.argsort(noise, dim=1)[:, :5])
    assert torch.all(mask.mask.sum(dim=1) == 15)
    assert torch.all(mask.mask.gather(1, mask.ids_keep) == 0)


def test_masked_pixels_cannot_influence_visible_tokens_or_predictions():
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL).eval()
    images = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, 16)
    mask = random_masking(noise, 0.75).mask
    patches = patchify(images, 16)
    changed = unpatchify(patches + 5 * torch.randn_like(patches) * mask.unsqueeze(-1), 16, (4, 4), 3)
    with torch.no_grad():
        before, after = model(images, noise=noise), model(changed, noise=noise)
    assert not torch.equal(images, changed)
    assert torch.equal(before["latent"], after["latent"])
    assert torch.equal(before["pred"], after["pred"])


def test_output_contract_and_any_input_size_and_grayscale():
    model = mimkit.create_model("mae_vit_tiny_patch16", in_chans=1, **SMALL)
    out = model(torch.randn(2, 1, 96, 48))
    assert out["loss"].dim() == 0
    assert out["pred"].shape == (2, 6 * 3, 16 * 16 * 1)
    assert out["mask"].shape == (2, 18)
    assert out["mask"].sum().item() == 2 * (18 - int(18 * 0.25))


def test_seeded_generator_replays_the_mask():
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    images = torch.randn(2, 3, 64, 64)
    first = model(images, generator=torch.Generator().manual_seed(3))["mask"]
    second = model(images, generator=torch.Generator().manual_seed(3))["mask"]
    assert torch.equal(first, second)


def test_bad_inputs_get_clear_errors():
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.randn(1, 3, 64, 64), noise=torch.rand(1, 10))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="model.depth"):
        mimkit.create_model("mae_vit_tiny_patch16", depth="deep")
    with pytest.raises(ConfigError, match="unknown config field 'model.dept'.*did you mean 'depth'"):
        mimkit.create_model("mae_vit_tiny_patch16", dept=3)
    with pytest.raises(ConfigError, match="unknown model 'mae_vit_gigantic'"):
        mimkit.create_model("mae_vit_gigantic")


def test_patchify_order_is_row_major_tokens_with_channel_fastest():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    tokens = patchify(images, 2)
    # token 1 = row 0, column 1; value index (y*p + x)*C + c
    assert tokens[0, 1, (1 * 2 + 0) * 3 + 2].item() == images[0, 2, 1, 2].item()
    assert torch.equal(unpatchify(tokens, 2, (2, 2), 3), images)


def test_sincos_first_half_encodes_column():
    table = sincos_2d(8, 2, 3)
    assert table.shape == (6, 8)
    assert torch.equal(table[0, :4], table[3, :4])  # same column 0, different rows
    assert not torch.equal(table[0, 4:], table[3, 4:])


def _layout_variants() -> list:
    path = parity_dir() / "mae" / "base_state_dict_layout.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no layout file at {path}"))]
    layout = json.loads(path.read_text())
    variants = {"base": layout["base"], **layout["other_variants"]}
    names = {"base": "mae_vit_base_patch16", "large": "mae_vit_large_patch16", "huge": "mae_vit_huge_patch14"}
    return [pytest.param((names[k], v), id=k) for k, v in variants.items()]


@pytest.mark.parametrize("variant", _layout_variants())
def test_named_sizes_match_the_authors_state_dict_layout(variant):
    """Every official key maps onto a mimkit parameter of the same shape, and the counts agree
    (official counts include the fixed sin-cos tables, which mimkit recomputes instead of storing)."""
    name, layout = variant
    with torch.device("meta"):
        model = mimkit.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {}
    for entry in layout["state_dict"]:
        target = map_mae_key(entry["key"])
        if target is not None:
            mapped[target] = tuple(entry["shape"])
    assert mapped == ours
    assert sum(p.numel() for p in model.parameters()) == layout["params_total"] - layout["params_frozen"]
