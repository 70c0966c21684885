"""Print the measured parity errors of every MAE, ConvMAE, MixMIM and LocalMIM case against the authors' reference
tensors.

    python benchmarks/parity_report.py            # uses $MIMKIT_PARITY_DIR or ../shared/parity
    python benchmarks/parity_report.py --device cuda

For each case: max |error| of predictions, latents and loss, in float32 (vs the official float64 and
float32 outputs) and in float64 (vs the official float64 outputs). LocalMIM: per tap, the HOG target, the
prediction, the normed latent and the tap's loss, then the total loss. ``benchmarks/gpu_check.py`` runs the
float32 rows on a GPU through :func:`parity_rows`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mimkit.models import create_model  # noqa: E402
from mimkit.official.convmae import convmae_config_from_official, load_convmae_weights  # noqa: E402
from mimkit.official.localmim import load_localmim_weights, localmim_config_from_official  # noqa: E402
from mimkit.official.mae import load_mae_weights, mae_config_from_official  # noqa: E402
from mimkit.official.mixmim import load_mixmim_weights, mixmae_config_from_official  # noqa: E402
from tests.parity_cases import ParityCase, discover  # noqa: E402

METHODS = {
    "mae": ("mae_vit_base_patch16", mae_config_from_official, load_mae_weights),
    "convmae": ("convmae_base", convmae_config_from_official, load_convmae_weights),
    "mixmim": ("mixmae_swin_base_w14", mixmae_config_from_official, load_mixmim_weights),
}
REFERENCE_OUTPUTS = {"mae": ("pred", "latent"), "convmae": ("pred", "latent"), "mixmim": ("x_rec", "z")}
"""mimkit output and official tensor name of the predictions and the encoder output of each method."""

Row = tuple[str, str, dict[str, float]]
"""(case label, precision, max |error| by quantity)."""


def cases(method: str) -> list[ParityCase]:
    return [param.values[0] for param in discover(method) if param.values[0] is not None]


def _precision(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encoder_case_rows(method: str, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> Iterator[Row]:
    base_name, config_from_official, load_weights = METHODS[method]
    pred_name, latent_name = REFERENCE_OUTPUTS[method]
    for case in cases(method):
        fields = config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
        inputs, outputs = case.tensors("inputs"), case.tensors("outputs")
        noise = inputs["noise"]
        if method == "mixmim":  # one label map per batch, drawn from the first row
            noise = noise.reshape(1, -1).expand(inputs["images"].shape[0], -1)
        for dtype in dtypes:
            model = create_model(base_name, **fields)
            load_weights(model, case.tensors("weights"))
            model = model.to(device=device, dtype=dtype)
            with torch.no_grad():
                out = model(inputs["images"].to(device=device, dtype=dtype), noise=noise.to(device))
            errors = {
                "pred": (out[pred_name].double().cpu() - outputs[f"{pred_name}_f64"]).abs().max().item(),
                "latent": (out["latent"].double().cpu() - outputs[f"{latent_name}_f64"]).abs().max().item(),
                "loss": abs(out["loss"].item() - outputs[case.loss_key("f64")].item()),
            }
            if dtype == torch.float32:
                errors["loss_vs_official_f32"] = abs(out["loss"].item() - outputs[case.loss_key("f32")].item())
            yield f"{method}/{case.name}", _precision(dtype), errors


def localmim_case_rows(device: torch.device, dtypes: tuple[torch.dtype, ...]) -> Iterator[Row]:
    """Per tap and total; the rows' quantities are named ``tap<k>_<quantity>``."""
    for case in cases("localmim"):
        fields = localmim_config_from_official(case.spec["constructor_args"], case.spec["mask_ratio"])
        inputs, outputs = case.tensors("inputs"), case.tensors("outputs")
        for dtype in dtypes:
            model = create_model("localmim_vit_base", **fields)
            load_localmim_weights(model, case.tensors("weights"))
            model = model.to(device=device, dtype=dtype)
            images = inputs["images"].to(device=device, dtype=dtype)
            with torch.no_grad():
                out = model(images, noise=inputs["noise"].to(device))
                _, raw = model.encoder(images, ids_keep=inputs["ids_keep"].to(device), return_layers=model.taps)
            errors = {}
            for k in range(len(model.taps)):
                latent = model.tap_norm(k)(raw[k]).double().cpu()
                errors[f"tap{k}_hog"] = (out[f"target{k}"].cpu() - outputs[f"hog_target{k}_f32"]).abs().max().item()
                errors[f"tap{k}_pred"] = (out[f"pred{k}"].double().cpu() - outputs[f"pred{k}_f64"]).abs().max().item()
                errors[f"tap{k}_latent"] = (latent - outputs[f"latent{k}_f64"]).abs().max().item()
                errors[f"tap{k}_loss"] = abs(out[f"loss_tap{k}"].item() - outputs[f"loss_scale{k}_f64"].item())
            errors["loss"] = abs(out["loss"].item() - outputs["loss_f64"].item())
            if dtype == torch.float32:
                errors["loss_vs_official_f32"] = abs(out["loss"].item() - outputs["loss_f32"].item())
            yield f"localmim/{case.name}", _precision(dtype), errors


def parity_rows(device: torch.device, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> list[Row]:
    """Every case of every method on ``device`` in each of ``dtypes``."""
    rows = [row for method in METHODS for row in encoder_case_rows(method, device, dtypes)]
    return rows + list(localmim_case_rows(device, dtypes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = parity_rows(torch.device(args.device))
    if not rows:
        print("no parity cases found (set MIMKIT_PARITY_DIR)")
    for label, precision, errors in rows:
        text = "  ".join(f"{name} {value:.2e}" for name, value in errors.items())
        print(f"{label} {precision:8s} max abs error: {text}")


if __name__ == "__main__":
    main()
