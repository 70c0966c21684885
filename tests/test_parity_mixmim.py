"""MixMAE parity against tensors produced by the authors' released MixMIM code (parity README 5).

The batch, the stage grids (from ``num_tokens_per_stage``) and the loss setting come from the case.
"""

from __future__ import annotations

import pytest
import torch

from mimkit.methods.mixmae import MixMAE
from mimkit.models import model_config
from mimkit.official.mixmim import load_mixmim_weights, map_mixmim_key, mixmae_config_from_official
from tests.parity_cases import assert_gradient_norms, discover, grid_side

CASES = discover("mixmim")


def _build(case, dtype: torch.dtype, **extra) -> tuple[MixMAE, dict, torch.Tensor]:
    fields = mixmae_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
    fields["norm_pix_loss"] = case.norm_pix_loss
    model = MixMAE(model_config("mixmae_swin_base_w14", **{**fields, **extra}))
    load_mixmim_weights(model, case.tensors("weights"))
    inputs = case.tensors("inputs")
    noise = inputs["noise"].reshape(1, -1).expand(case.batch, -1)  # one label map per batch, drawn from row 0
    return model.to(dtype), inputs, noise


def _stage_grid(case, stage: int) -> int:
    return grid_side(case.spec["num_tokens_per_stage"][stage])


@pytest.mark.parametrize("case", CASES)
def test_parity_mixmim_labels_and_mask_from_noise(case):
    """The token labels (drawn on the last stage's grid) and the returned mask, one map shared by the whole batch,
    are the official ones exactly."""
    model, inputs, noise = _build(case, torch.float32)
    with torch.no_grad():
        out = model(inputs["images"], noise=noise)
    assert torch.equal(out["mix_labels"].float().reshape(inputs["mask_s4"].shape), inputs["mask_s4"])
    assert torch.equal(out["mask"].float(), inputs["mask_s4"].reshape(1, -1).expand(case.batch, -1))


@pytest.mark.parametrize("case", CASES)
def test_parity_mixmim_float32(case):
    model, inputs, noise = _build(case, torch.float32)
    outputs = case.tensors("outputs")
    side = _stage_grid(case, 0)
    with torch.no_grad():
        out = model(inputs["images"], noise=noise)
        mixed = model.encoder.embed(out["inputs"])
        mixed = mixed + model.encoder.absolute_pos_embed((side, side))[:, 1:].reshape(1, side, side, -1)
    assert (mixed.flatten(1, 2) - outputs["mixed_tokens_f32"]).abs().max().item() <= 1e-5
    assert (out["x_rec"].double() - outputs["x_rec_f64"]).abs().max().item() <= 1e-5
    assert (out["latent"] - outputs["z_f32"]).abs().max().item() <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f32")].item()) <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_parity_mixmim_float64_with_gradients(case):
    model, inputs, noise = _build(case, torch.float64)
    outputs = case.tensors("outputs")
    images = inputs["images"].double()
    out = model(images, noise=noise)
    assert (out["x_rec"] - outputs["x_rec_f64"]).abs().max().item() <= 1e-10
    assert (out["latent"] - outputs["z_f64"]).abs().max().item() <= 1e-10
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-12
    side = _stage_grid(case, 3)
    with torch.no_grad():
        groups = model.mix_mask(noise).labels.reshape(-1, side, side)
        _, stages = model.encoder.encode(model.encoder.embed(out["inputs"]), groups)
    assert (stages[3].flatten(2).transpose(1, 2) - outputs["layer3_out_f64"]).abs().max().item() <= 1e-10
    out["loss"].backward()
    assert_gradient_norms(case, model, map_mixmim_key)


@pytest.mark.parametrize("case", CASES)
def test_parity_mixmim_other_loss_setting(case):
    """With ``norm_pix_loss`` flipped the same prediction is scored against the other target."""
    other = not case.norm_pix_loss
    model, inputs, noise = _build(case, torch.float64, norm_pix_loss=other)
    out = model(inputs["images"].double(), noise=noise)
    assert abs(out["loss"].item() - case.tensors("outputs")[case.loss_key("f64", other)].item()) <= 1e-10
