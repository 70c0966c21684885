"""ConvMAE parity against tensors produced by the authors' released code (parity README 4).

Both execution paths are checked: the default one that computes only the visible regions in the conv
stages, and the dense one that computes every position as the authors' code does. The loss setting, batch, token
grid and stage cell sizes come from the case.
"""

from __future__ import annotations

import math

import pytest
import torch

from mimkit.backbones.cell_layout import CellLayout
from mimkit.methods.convmae import ConvMAE
from mimkit.models import model_config
from mimkit.official.convmae import convmae_config_from_official, load_convmae_weights, map_convmae_key
from tests.parity_cases import assert_gradient_norms, discover, grid_side

CASES = discover("convmae")
PATHS = [pytest.param(True, id="visible-only"), pytest.param(False, id="dense")]


def _build(case, dtype: torch.dtype, **extra) -> tuple[ConvMAE, dict]:
    fields = convmae_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
    fields["norm_pix_loss"] = case.norm_pix_loss
    model = ConvMAE(model_config("convmae_base", **{**fields, **extra}))
    load_convmae_weights(model, case.tensors("weights"))
    return model.to(dtype), case.tensors("inputs")


def _cells_per_token(case, stage: int) -> int:
    """Cells of conv stage ``stage`` (1 or 2) per stage-3 token along each side: the later stages' patch sizes."""
    return math.prod(case.spec["constructor_args"]["patch_size"][stage:])


@pytest.mark.parametrize("skip", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_parity_convmae_float32(case, skip):
    model, inputs = _build(case, torch.float32, skip_masked_regions=skip)
    outputs = case.tensors("outputs")
    with torch.no_grad():
        out = model(inputs["images"], noise=inputs["noise"])
    assert torch.equal(out["mask"], inputs["mask"])
    assert torch.equal(out["ids_restore"], inputs["ids_restore"])
    assert (out["pred"].double() - outputs["pred_f64"]).abs().max().item() <= 1e-5
    assert (out["latent"] - outputs["latent_f32"]).abs().max().item() <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f32")].item()) <= 1e-5


@pytest.mark.parametrize("skip", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_parity_convmae_float64_intermediates_and_gradients(case, skip):
    """In float64 every stored tensor agrees to ~1e-10, and so does every parameter's gradient norm."""
    model, inputs = _build(case, torch.float64, skip_masked_regions=skip)
    outputs = case.tensors("outputs")
    images = inputs["images"].double()
    out = model(images, noise=inputs["noise"])
    assert (out["pred"] - outputs["pred_f64"]).abs().max().item() <= 1e-10
    assert (out["latent"] - outputs["latent_f64"]).abs().max().item() <= 1e-10
    assert (out["per_patch_loss"] - outputs["per_patch_loss_f64"]).abs().max().item() <= 1e-10
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-12

    cells = _cells_per_token(case, 1)
    with torch.no_grad():
        visibility = None if skip else (1 - inputs["mask"])[:, :, None, None].expand(-1, -1, cells, cells)
        features = model.encoder(images, ids_keep=inputs["ids_keep"], visibility=visibility, dense_conv_stages=not skip)
        term1, term2 = model.fusion.terms(features)
    assert (features.stage3 - outputs["stage3_blocks_out_f64"]).abs().max().item() <= 1e-10
    assert (term1 - outputs["stage1_embed_f64"]).abs().max().item() <= 1e-10
    assert (term2 - outputs["stage2_embed_f64"]).abs().max().item() <= 1e-10

    out["loss"].backward()
    assert_gradient_norms(case, model, map_convmae_key)


@pytest.mark.parametrize("case", CASES)
def test_parity_convmae_other_loss_setting(case):
    """With ``norm_pix_loss`` flipped the same prediction is scored against the other target."""
    other = not case.norm_pix_loss
    model, inputs = _build(case, torch.float64, norm_pix_loss=other)
    out = model(inputs["images"].double(), noise=inputs["noise"])
    assert abs(out["loss"].item() - case.tensors("outputs")[case.loss_key("f64", other)].item()) <= 1e-10


@pytest.mark.parametrize("case", CASES)
def test_visible_regions_of_the_conv_stages_are_the_official_upsampled_masks(case):
    """The cells the visible-only layout computes are exactly the visible cells of the authors' block-wise
    masks at stages 1 and 2 (x4 and x2 in the shipped case)."""
    inputs = case.tensors("inputs")
    side = grid_side(case.spec["num_patches"])
    layout = CellLayout((side, side), inputs["ids_keep"])
    for stage in (1, 2):
        cells = _cells_per_token(case, stage)
        computed = layout.to_map(torch.ones(case.batch, case.spec["len_keep"], cells, cells, 1))
        assert torch.equal(computed.permute(0, 3, 1, 2), 1 - inputs[f"mask_for_patch{stage}"])
