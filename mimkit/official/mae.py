"""Key mapping from the authors' MAE state dict (``models_mae.MaskedAutoencoderViT``) onto :class:`mimkit.MAE`.

| official key            | mimkit key              |
|-------------------------|-------------------------|
| ``cls_token``           | ``encoder.cls_token``   |
| ``patch_embed.proj.*``  | ``encoder.patch_embed.proj.*`` |
| ``blocks.{i}.*``        | ``encoder.blocks.{i}.*`` (same layout: norm1, attn.qkv/proj, norm2, mlp.fc1/fc2) |
| ``norm.*``              | ``encoder.norm.*``      |
| ``mask_token``          | ``decoder.mask_token``  |
| ``decoder_embed.*``     | ``decoder.embed.*``     |
| ``decoder_blocks.{i}.*``| ``decoder.blocks.{i}.*``|
| ``decoder_norm.*``      | ``decoder.norm.*``      |
| ``decoder_pred.*``      | ``decoder.pred.*``      |
| ``pos_embed``, ``decoder_pos_embed`` | not loaded: fixed sin-cos tables that mimkit recomputes; they are verified |

A fine-tuning checkpoint (official ``models_vit``) holds only the encoder keys (plus ``fc_norm``/``head``,
which are not part of the pretraining model and are dropped).
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.official.checkpoint import check_sincos_table, load_converted_weights, rename_by_prefix

_PREFIXES = (
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
    ("mask_token", "decoder.mask_token"),
    ("cls_token", "encoder.cls_token"),
    ("patch_embed.", "encoder.patch_embed."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
)
_FIXED_TABLES = ("pos_embed", "decoder_pos_embed")
_FINETUNE_ONLY = ("head.", "fc_norm.")


def map_mae_key(key: str) -> str | None:
    """mimkit's name for one official MAE key; ``None`` for keys that are not loaded (fixed tables, head)."""
    if key in _FIXED_TABLES or key.startswith(_FINETUNE_ONLY):
        return None
    return rename_by_prefix(key, _PREFIXES, "MAE")


def convert_mae_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' MAE keys to mimkit's (table in the module docstring).

    Fixed sin-cos tables are checked against mimkit's formula and dropped; unknown keys raise.
    """
    converted = {}
    for key, value in state_dict.items():
        if key in _FIXED_TABLES:
            check_sincos_table(key, value)
        name = map_mae_key(key)
        if name is not None:
            converted[name] = value
    return converted


def load_mae_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], encoder_only: bool = False) -> None:
    """Load an official MAE state dict into a mimkit MAE model (strict on every key that should be there)."""
    load_converted_weights(model, convert_mae_state_dict(state_dict), "MAE", encoder_only)


def mae_config_from_official(constructor_args: dict, mask_ratio: float = 0.75) -> dict:
    """Translate the official ``MaskedAutoencoderViT`` constructor arguments into ``MAEConfig`` fields."""
    fields = {
        key: constructor_args[key]
        for key in (
            "img_size",
            "patch_size",
            "in_chans",
            "embed_dim",
            "depth",
            "num_heads",
            "decoder_embed_dim",
            "decoder_depth",
            "decoder_num_heads",
            "mlp_ratio",
            "norm_pix_loss",
        )
        if key in constructor_args
    }
    norm_layer = str(constructor_args.get("norm_layer", ""))
    if "eps=" in norm_layer:
        fields["norm_eps"] = float(norm_layer.split("eps=")[1].rstrip(")"))
    else:
        fields["norm_eps"] = 1e-5  # the class default nn.LayerNorm
    fields["mask_ratio"] = mask_ratio
    return fields
