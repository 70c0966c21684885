"""Print the measured parity errors of every MAE, ConvMAE, MixMIM and LocalMIM case against the authors' reference
tensors.

    python benchmarks/parity_report.py            # uses $MIMKIT_PARITY_DIR or ../shared/parity

For each case: max |error| of predictions, latents and loss, in float32 (vs the official float64 and
float32 outputs) and in float64 (vs the official float64 outputs). LocalMIM: per tap, the HOG target, the
prediction, the normed latent and the tap's loss, then the total loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimkit.models import create_model  # noqa: E402
from mimkit.official.convmae import convmae_config_from_official, load_convmae_weights  # noqa: E402
from mimkit.official.localmim import load_localmim_weights, localmim_config_from_official  # noqa: E402
from mimkit.official.mae import load_mae_weights, mae_config_from_official  # noqa: E402
from mimkit.official.mixmim import load_mixmim_weights, mixmae_config_from_official  # noqa: E402
from tests.parity_cases import discover  # noqa: E402

METHODS = {
    "mae": ("mae_vit_base_patch16", mae_config_from_official, load_mae_weights),
    "convmae": ("convmae_base", convmae_config_from_official, load_convmae_weights),
    "mixmim": ("mixmae_swin_base_w14", mixmae_config_from_official, load_mixmim_weights),
}
REFERENCE_OUTPUTS = {"mae": ("pred", "latent"), "convmae": ("pred", "latent"), "mixmim": ("x_rec", "z")}
"""mimkit output and official tensor name of the predictions and the encoder output of each method."""


def report(method: str) -> None:
    base_name, config_from_official, load_weights = METHODS[method]
    for param in discover(method):
        case = param.values[0]
        if case is None:
            print(f"no {method} parity cases found")
            return
        fields = config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
        inputs, outputs = case.tensors("inputs"), case.tensors("outputs")
        noise = inputs["noise"]
        if method == "mixmim":  # one label map per batch, drawn from the first row
            noise = noise.reshape(1, -1).expand(inputs["images"].shape[0], -1)
        pred_name, latent_name = REFERENCE_OUTPUTS[method]
        for dtype in (torch.float32, torch.float64):
            model = create_model(base_name, **fields)
            load_weights(model, case.tensors("weights"))
            model = model.to(dtype)
            with torch.no_grad():
                out = model(inputs["images"].to(dtype), noise=noise)
            errors = {
                "pred": (out[pred_name].double() - outputs[f"{pred_name}_f64"]).abs().max().item(),
                "latent": (out["latent"].double() - outputs[f"{latent_name}_f64"]).abs().max().item(),
                "loss": abs(out["loss"].item() - outputs["loss_normpix_f64"].item()),
            }
            if dtype == torch.float32:
                errors["loss_vs_official_f32"] = abs(out["loss"].item() - outputs["loss_normpix_f32"].item())
            text = "  ".join(f"{k} {v:.2e}" for k, v in errors.items())
            print(f"{method}/{case.name} {str(dtype).removeprefix('torch.'):8s} max abs error: {text}")


def report_localmim() -> None:
    for param in discover("localmim"):
        case = param.values[0]
        if case is None:
            print("no localmim parity cases found")
            return
        fields = localmim_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
        inputs, outputs = case.tensors("inputs"), case.tensors("outputs")
        for dtype in (torch.float32, torch.float64):
            model = create_model("localmim_vit_base", **fields)
            load_localmim_weights(model, case.tensors("weights"))
            model = model.to(dtype)
            images = inputs["images"].to(dtype)
            with torch.no_grad():
                out = model(images, noise=inputs["noise"])
                _, raw = model.encoder(images, ids_keep=inputs["ids_keep"], return_layers=model.taps)
            precision = str(dtype).removeprefix("torch.")
            for k in range(len(model.taps)):
                errors = {
                    "hog": (out[f"target{k}"] - outputs[f"hog_target{k}_f32"]).abs().max().item(),
                    "pred": (out[f"pred{k}"].double() - outputs[f"pred{k}_f64"]).abs().max().item(),
                    "latent": (model.tap_norm(k)(raw[k]).double() - outputs[f"latent{k}_f64"]).abs().max().item(),
                    "loss": abs(out[f"loss_tap{k}"].item() - outputs[f"loss_scale{k}_f64"].item()),
                }
                text = "  ".join(f"{name} {value:.2e}" for name, value in errors.items())
                print(f"localmim/{case.name} {precision:8s} tap {k} max abs error: {text}")
            total = abs(out["loss"].item() - outputs["loss_f64"].item())
            vs_f32 = abs(out["loss"].item() - outputs["loss_f32"].item())
            print(f"localmim/{case.name} {precision:8s} total loss error: {total:.2e} (vs official f32 {vs_f32:.2e})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in METHODS:
        report(name)
    report_localmim()
