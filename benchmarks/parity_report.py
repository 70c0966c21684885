"""Print the measured parity errors of every MAE, ConvMAE and MixMIM case against the authors' reference tensors.

    python benchmarks/parity_report.py            # uses $MIMKIT_PARITY_DIR or ../shared/parity

For each case: max |error| of predictions, latents and loss, in float32 (vs the official float64 and
float32 outputs) and in float64 (vs the official float64 outputs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimkit.models import create_model  # noqa: E402
from mimkit.official.convmae import convmae_config_from_official, load_convmae_weights  # noqa: E402
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


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in METHODS:
        report(name)
