"""The parity tests take batch, loss setting and shapes from the case: cases derived from the shipped ones in a
temporary folder are checked by the same test functions, without code changes.

What this can show, and what it cannot: a derived case reuses official tensors only where the documented format
makes them independent of the change. A case built with ``norm_pix_loss: false`` scores the same prediction by the
stored ``loss_pixel_*`` (both losses of one prediction are stored), and masks are per sample (ConvMAE) or one map
for the whole batch (MixMIM), so a sliced or repeated batch keeps official masks. No official run produced the
gradient norms of the other loss, nor the losses, predictions or gradients of another batch, so the checks that need
those are not run on derived cases; they stay proven on the shipped cases only.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from safetensors.torch import save_file

import tests.test_parity_convmae as convmae_parity
import tests.test_parity_mae as mae_parity
import tests.test_parity_mixmim as mixmim_parity
from tests.parity_cases import ParityCase, discover

LOSS_CHECKS = {
    "mae": (mae_parity.test_parity_mae_float32, mae_parity.test_parity_mae_other_loss_setting),
    "convmae": (
        partial(convmae_parity.test_parity_convmae_float32, skip=True),
        convmae_parity.test_parity_convmae_other_loss_setting,
    ),
    "mixmim": (mixmim_parity.test_parity_mixmim_float32, mixmim_parity.test_parity_mixmim_other_loss_setting),
}


def cases_of(*methods: str) -> list:
    return [
        pytest.param(method, *param.values, marks=param.marks, id=f"{method}-{param.id}")
        for method in methods
        for param in discover(method)
    ]


def derive(case: ParityCase, folder, spec_changes: dict, inputs: dict | None = None) -> ParityCase:
    """A copy of ``case`` written to ``folder``: its JSON with ``spec_changes`` (a dict value is merged into the
    stored dict), its inputs updated with ``inputs``, and the files listing following the tensors written."""
    spec = copy.deepcopy(case.spec)
    for key, value in spec_changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    for role, changes in (("weights", {}), ("inputs", inputs or {}), ("outputs", {})):
        name = next(f for f in spec["files"] if f.endswith(f"_{role}.safetensors"))
        tensors = {**case.tensors(role), **changes}
        save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(folder / name))
        spec["files"][name] = {
            key: {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
            for key, tensor in tensors.items()
        }
    return ParityCase(f"{case.name}-derived", spec, folder)


@pytest.mark.parametrize(("method", "case"), cases_of(*LOSS_CHECKS))
def test_a_case_built_without_norm_pix_loss_is_scored_by_its_pixel_loss(method, case, tmp_path):
    unset = {"norm_pix_loss": False}
    derived = derive(case, tmp_path, {"primary_loss_setting": unset, "constructor_args": unset})
    assert derived.loss_key("f64") == "loss_pixel_f64" and derived.loss_key("f32", True) == "loss_normpix_f32"
    primary_check, other_check = LOSS_CHECKS[method]
    primary_check(derived)  # the model built with the case's setting gives the stored pixel loss
    other_check(derived)  # and with the setting flipped, the stored norm-pix loss


@pytest.mark.parametrize("case", discover("mixmim"))
def test_the_mixmim_mask_check_follows_the_case_batch(case, tmp_path):
    """A batch of four (the two images, then both again in reverse order) shares the one official mask."""
    images = case.tensors("inputs")["images"]
    derived = derive(case, tmp_path, {"batch": 4}, {"images": torch.cat([images, images.flip(0)])})
    mixmim_parity.test_parity_mixmim_labels_and_mask_from_noise(derived)


@pytest.mark.parametrize("case", discover("convmae"))
def test_the_convmae_stage_mask_check_follows_the_case_batch(case, tmp_path):
    """The first image alone keeps its official per-sample masks at every stage."""
    first = {key: tensor[:1] for key, tensor in case.tensors("inputs").items()}
    derived = derive(case, tmp_path, {"batch": 1}, first)
    convmae_parity.test_visible_regions_of_the_conv_stages_are_the_official_upsampled_masks(derived)


@pytest.mark.parametrize("case", discover("mae"))
def test_a_case_whose_tensors_contradict_its_json_is_refused(case, tmp_path):
    with pytest.raises(AssertionError):
        derive(case, tmp_path, {"batch": 3}).tensors("inputs")
    contradictory = derive(case, tmp_path, {"primary_loss_setting": {"norm_pix_loss": False}})
    with pytest.raises(AssertionError, match="contradicts itself"):
        contradictory.loss_key("f64")
