"""MAE parity against tensors produced by the authors' released code (parity README 3).

The primary loss, the one the stored gradient norms belong to, follows the case's ``primary_loss_setting``
(``loss_normpix_*`` or ``loss_pixel_*``); the other stored loss is checked with the setting flipped.
"""

from __future__ import annotations

import pytest
import torch

from mimkit.methods.mae import MAE
from mimkit.models import model_config
from mimkit.official.mae import load_mae_weights, mae_config_from_official, map_mae_key
from tests.parity_cases import assert_gradient_norms, discover

CASES = discover("mae")


def _build(case, dtype: torch.dtype, norm_pix_loss: bool | None = None) -> tuple[MAE, dict]:
    fields = mae_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
    fields["norm_pix_loss"] = case.norm_pix_loss if norm_pix_loss is None else norm_pix_loss
    model = MAE(model_config("mae_vit_base_patch16", **fields))
    load_mae_weights(model, case.tensors("weights"))
    return model.to(dtype), case.tensors("inputs")


@pytest.mark.parametrize("case", CASES)
def test_parity_mae_float32(case):
    model, inputs = _build(case, torch.float32)
    outputs = case.tensors("outputs")
    with torch.no_grad():
        out = model(inputs["images"], noise=inputs["noise"])
    assert torch.equal(out["mask"], inputs["mask"])
    assert torch.equal(out["ids_restore"], inputs["ids_restore"])
    assert (out["pred"].double() - outputs["pred_f64"]).abs().max().item() <= 1e-5
    assert (out["latent"] - outputs["latent_f32"]).abs().max().item() <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-5
    assert abs(out["loss"].item() - outputs[case.loss_key("f32")].item()) <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_parity_mae_float64_with_gradients(case):
    """In float64 the implementation must agree to ~1e-10, and so must every parameter's gradient norm."""
    model, inputs = _build(case, torch.float64)
    outputs = case.tensors("outputs")
    out = model(inputs["images"].double(), noise=inputs["noise"])
    assert (out["pred"] - outputs["pred_f64"]).abs().max().item() <= 1e-10
    assert (out["latent"] - outputs["latent_f64"]).abs().max().item() <= 1e-10
    assert (out["per_patch_loss"] - outputs["per_patch_loss_f64"]).abs().max().item() <= 1e-10
    assert abs(out["loss"].item() - outputs[case.loss_key("f64")].item()) <= 1e-12
    out["loss"].backward()
    assert_gradient_norms(case, model, map_mae_key)


@pytest.mark.parametrize("case", CASES)
def test_parity_mae_other_loss_setting(case):
    """With ``norm_pix_loss`` flipped the same prediction is scored against the other target."""
    other = not case.norm_pix_loss
    model, inputs = _build(case, torch.float64, norm_pix_loss=other)
    out = model(inputs["images"].double(), noise=inputs["noise"])
    assert abs(out["loss"].item() - case.tensors("outputs")[case.loss_key("f64", other)].item()) <= 1e-10
