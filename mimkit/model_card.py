"""The ``README.md`` model card of a saved model: method and paper, model, data, recipe and metrics of its run.

Everything comes from what the weights record (no torch needed): the resolved model configuration, and for weights
from a mimkit training run its recorded config, position and last loss. What is not recorded is said to be.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCardData

from mimkit import __version__

CONVMAE_TITLE = "ConvMAE: Masked Convolution Meets Masked Autoencoders"
MR_MAE_TITLE = "Mimic before Reconstruct: Enhancing Masked Autoencoders with Feature Mimicking"
PAPERS = {
    "mae_": ("MAE", "Masked Autoencoders Are Scalable Vision Learners", "2111.06377"),
    "convmae_": ("ConvMAE", CONVMAE_TITLE, "2205.03892"),
    "videoconvmae_": ("VideoConvMAE", CONVMAE_TITLE, "2205.03892"),
    "mixmae_": (
        "MixMAE",
        "MixMAE: Mixed and Masked Autoencoder for Efficient Pretraining of Hierarchical Vision Transformers",
        "2205.13137",
    ),
    "localmim_": ("LocalMIM", "Masked Image Modeling with Local Multi-Scale Reconstruction", "2303.05251"),
    "mrmae_": ("MR-MAE", MR_MAE_TITLE, "2303.05475"),
    "mrmcmae_": ("MR-MCMAE", MR_MAE_TITLE, "2303.05475"),
}
"""Method, paper title and arXiv id, by the prefix of the mimkit model name."""

MODEL_FIELDS = ("img_size", "in_chans", "patch_size", "embed_dim", "embed_dims", "depth", "depths", "mask_ratio")
"""The configuration fields the card lists (those a model has); config.json holds all of them."""
NOT_RECORDED = "Not recorded: these weights were saved from Python, not from a mimkit training run's checkpoint."


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows if value is not None)]


def _section(tree: dict[str, Any], key: str) -> dict[str, Any]:
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def _run_sections(run: dict[str, Any]) -> list[str]:
    config = _section(run, "config")
    data, optim, train = _section(config, "data"), _section(config, "optim"), _section(config, "train")
    geometry = _section(config, "run")
    data_rows = [
        ("source", data.get("source")),
        ("path", data.get("path")),
        ("image size", data.get("img_size")),
        ("channels", data.get("in_chans")),
        ("normalization mean / std", f"{data.get('mean')} / {data.get('std')}" if "mean" in data else None),
    ]
    recipe_rows = [
        ("epochs", train.get("epochs")),
        ("images per optimizer step", geometry.get("images_per_step")),
        ("base lr (per 256 images)", optim.get("base_lr")),
        ("weight decay", optim.get("weight_decay")),
        ("AdamW betas", optim.get("betas")),
        ("warm-up epochs", optim.get("warmup_epochs")),
        ("precision", train.get("precision")),
        ("seed", train.get("seed")),
    ]
    metric_rows = [
        ("optimizer steps done", run.get("step")),
        ("epochs done", run.get("epoch")),
        ("last training loss", config.get("last_loss")),
    ]
    return [
        "## Data",
        "",
        *_table(data_rows),
        "",
        "## Recipe",
        "",
        *_table(recipe_rows),
        "",
        "The whole training config is under `run.config` in `config.json`.",
        "",
        "## Metrics",
        "",
        *_table(metric_rows),
    ]


def model_card_text(
    model_name: str, resolved: dict[str, Any], run: dict[str, Any] | None, parameters: int, repo_id: str | None = None
) -> str:
    """The model card of pretraining model ``model_name`` (its resolved configuration ``resolved``, ``parameters``
    trainable parameters), trained by ``run`` (``config.json``'s entry; ``None``: unknown)."""
    method, title, arxiv = next(
        (paper for prefix, paper in PAPERS.items() if model_name.startswith(prefix)),
        (model_name, None, None),
    )
    header = ModelCardData(
        library_name="mimkit",
        pipeline_tag="image-feature-extraction",
        tags=["mimkit", "masked-image-modeling", "self-supervised", method.lower()],
    ).to_yaml()
    paper = f' ("{title}", https://arxiv.org/abs/{arxiv})' if title else ""
    model_rows = [(key, resolved[key]) for key in MODEL_FIELDS if key in resolved]
    model_rows.append(("trainable parameters", f"{parameters:,}"))
    load_from = repo_id or "PATH_OR_REPO_ID"
    lines = [
        "---",
        header,
        "---",
        "",
        f"# {model_name}",
        "",
        f"A {method} pretraining model{paper}, saved by mimkit {__version__}: the encoder with its pretraining "
        "decoder and heads.",
        "",
        "## Model",
        "",
        *_table(model_rows),
        "",
        "`config.json` holds the model's whole configuration (`model_config`).",
        "",
        *(_run_sections(run) if run is not None else ["## Data, recipe and metrics", "", NOT_RECORDED]),
        "",
        "## Use",
        "",
        "```python",
        "import mimkit",
        "",
        f'model = mimkit.from_pretrained("{load_from}")',
        "encoder = model.encoder_module()  # the backbone alone, to fine-tune or extract features",
        "```",
        "",
    ]
    return "\n".join(lines)
