"""LocalMIM parity against tensors produced by the authors' released ViT code (parity README 6).

The scales checked are the case's (``decoder_scales``), fed by the blocks it lists
(``encoder_block_ids_feeding_decoders``), which the model's taps must equal.
"""

from __future__ import annotations

import pytest
import torch

from mimkit.methods.localmim import LocalMIM
from mimkit.models import model_config
from mimkit.official.localmim import load_localmim_weights, localmim_config_from_official, map_localmim_key
from tests.parity_cases import assert_gradient_norms, discover

CASES = discover("localmim")


def _build(case, dtype: torch.dtype) -> tuple[LocalMIM, dict, dict]:
    fields = localmim_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
    model = LocalMIM(model_config("localmim_vit_base", **fields))
    load_localmim_weights(model, case.tensors("weights"))
    assert list(model.taps) == case.spec["encoder_block_ids_feeding_decoders"]
    return model.to(dtype), case.tensors("inputs"), case.tensors("outputs")


def _scales(case) -> range:
    return range(len(case.spec["decoder_scales"]))


@pytest.mark.parametrize("case", CASES)
def test_parity_localmim_masks_and_hog_targets_are_exact(case):
    """Masks at every scale (fractional 2x2 averages at the coarsest) and the HOG targets equal the official
    tensors bit for bit."""
    model, inputs, outputs = _build(case, torch.float32)
    with torch.no_grad():
        out = model(inputs["images"], noise=inputs["noise"])
    assert torch.equal(out["mask"], inputs["mask"])
    assert torch.equal(out["ids_restore"], inputs["ids_restore"])
    for k in _scales(case):
        assert torch.equal(out[f"mask{k}"], inputs[f"mask_scale{k}"]), k
        assert torch.equal(out[f"target{k}"], outputs[f"hog_target{k}_f32"]), k


@pytest.mark.parametrize("case", CASES)
def test_parity_localmim_float32(case):
    model, inputs, outputs = _build(case, torch.float32)
    with torch.no_grad():
        out = model(inputs["images"], noise=inputs["noise"])
    for k in _scales(case):
        assert (out[f"pred{k}"].double() - outputs[f"pred{k}_f64"]).abs().max().item() <= 1e-5, k
        assert abs(out[f"loss_tap{k}"].item() - outputs[f"loss_scale{k}_f32"].item()) <= 1e-5, k
        assert abs(out[f"loss_tap{k}"].item() - outputs[f"loss_scale{k}_f64"].item()) <= 1e-5, k
    assert abs(out["loss"].item() - outputs["loss_f32"].item()) <= 1e-5
    assert abs(out["loss"].item() - outputs["loss_f64"].item()) <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_parity_localmim_float64_latents_predictions_losses_and_gradients(case):
    """In float64 (HOG targets stay float32, as in the authors' code) every stored tensor agrees to ~1e-10 and
    so does every parameter's gradient norm."""
    model, inputs, outputs = _build(case, torch.float64)
    images = inputs["images"].double()
    out = model(images, noise=inputs["noise"])
    for k in _scales(case):
        assert (out[f"pred{k}"] - outputs[f"pred{k}_f64"]).abs().max().item() <= 1e-10, k
        assert abs(out[f"loss_tap{k}"].item() - outputs[f"loss_scale{k}_f64"].item()) <= 1e-12, k
    assert abs(out["loss"].item() - outputs["loss_f64"].item()) <= 1e-12

    with torch.no_grad():
        _, raw = model.encoder(images, ids_keep=inputs["ids_keep"], return_layers=model.taps)
    for k, features in enumerate(raw):
        assert (model.tap_norm(k)(features) - outputs[f"latent{k}_f64"]).abs().max().item() <= 1e-10, k

    out["loss"].backward()
    assert_gradient_norms(case, model, map_localmim_key)


@pytest.mark.parametrize("case", CASES)
def test_hog_biases_of_the_vit_l_recipe_load_per_scale_and_kernels_are_checked(case):
    """With ``hog_bias`` each scale's frozen gradient bias is loaded into its row of ``hog.bias`` and changes that
    scale's targets; a state dict whose HOG kernels are not Sobel's is refused."""
    fields = localmim_config_from_official({**case.spec["constructor_args"], "hog_bias": True}, case.spec["mask_ratio"])
    model = LocalMIM(model_config("localmim_vit_base", **fields))
    weights = case.tensors("weights")
    biases = {f"hog_enc.{k}.conv.bias": torch.tensor([0.1 * (k + 1), -0.2]) for k in _scales(case)}
    load_localmim_weights(model, {**weights, **biases})
    assert torch.equal(model.hog.bias, torch.stack(list(biases.values())))
    images = case.tensors("inputs")["images"]
    unbiased = LocalMIM(model_config("localmim_vit_base", **{**fields, "hog_bias": False})).targets(images)
    biased = model.targets(images)
    assert all(not torch.equal(a, b) for a, b in zip(biased, unbiased, strict=True))

    broken = dict(weights)
    broken["hog_enc.0.conv.weight"] = weights["hog_enc.0.conv.weight"] * 2
    with pytest.raises(ValueError, match="not the Sobel kernel pair"):
        load_localmim_weights(model, broken)
