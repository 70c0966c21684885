"""Key mapping from the authors' MixMIM state dict (``models_mixmim.MixMIM``) onto
:class:`mimkit.methods.mixmae.MixMAE`.

| official key                                   | mimkit key                                  |
|------------------------------------------------|---------------------------------------------|
| ``patch_embed.{proj,norm}.*``                  | ``encoder.patch_embed.{proj,norm}.*``       |
| ``layers.{s}.blocks.{j}.*`` (same names inside) | ``encoder.layers.{s}.blocks.{j}.*``          |
| ``layers.{s}.downsample.{norm,reduction}.*``   | ``encoder.layers.{s}.downsample.{norm,reduction}.*`` |
| ``norm.*``                                     | ``encoder.norm.*``                          |
| ``mask_token``, ``decoder_{embed,blocks,norm,pred}.*`` | ``decoder.{mask_token,embed,blocks,norm,pred}.*`` |
| ``absolute_pos_embed``, ``decoder_pos_embed``  | not loaded: fixed sin-cos tables, verified and recomputed |
| ``*.attn.relative_position_index``             | not loaded: deterministic index, verified and recomputed |

A fine-tuning checkpoint (official ``models_mixmim_ft.MixMIM``) holds the encoder keys plus ``head``, which
is dropped.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import get_relative_position_index
from torch import nn

from mimkit.official.checkpoint import check_sincos_table, load_converted_weights, rename_by_prefix

_PREFIXES = (
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
    ("mask_token", "decoder.mask_token"),
    ("patch_embed.", "encoder.patch_embed."),
    ("layers.", "encoder.layers."),
    ("norm.", "encoder.norm."),
)
_FIXED_TABLES = ("absolute_pos_embed", "decoder_pos_embed")
_RELATIVE_INDEX = "attn.relative_position_index"


def map_mixmim_key(key: str) -> str | None:
    """mimkit's name for one official MixMIM key; ``None`` for keys that are not loaded."""
    if key in _FIXED_TABLES or key.endswith(_RELATIVE_INDEX) or key.startswith("head."):
        return None
    return rename_by_prefix(key, _PREFIXES, "MixMIM")


def _check_relative_index(key: str, index: torch.Tensor) -> None:
    window = round(index.shape[0] ** 0.5)
    if not torch.equal(index.long(), get_relative_position_index(window, window)):
        raise ValueError(f"{key} is not the relative position index mimkit recomputes")


def convert_mixmim_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' keys to mimkit's; fixed tables and indices are verified and dropped."""
    converted = {}
    for key, value in state_dict.items():
        if key in _FIXED_TABLES:
            check_sincos_table(key, value)
        elif key.endswith(_RELATIVE_INDEX):
            _check_relative_index(key, value)
        name = map_mixmim_key(key)
        if name is not None:
            converted[name] = value
    return converted


def load_mixmim_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], encoder_only: bool = False) -> None:
    """Load an official MixMIM state dict into a mimkit MixMAE model (strict on every expected key)."""
    load_converted_weights(model, convert_mixmim_state_dict(state_dict), "MixMIM", encoder_only)


def mixmae_config_from_official(constructor_args: dict, mask_ratio: float = 0.5) -> dict:
    """Translate ``models_mixmim.MixMIM`` constructor arguments into ``MixMAEConfig`` fields (pair mixing)."""
    return {
        "img_size": constructor_args.get("img_size", 224),
        "in_chans": constructor_args.get("in_chans", 3),
        "embed_dim": constructor_args["embed_dim"],
        "depths": tuple(constructor_args["depths"]),
        "num_heads": tuple(constructor_args["num_heads"]),
        "window_sizes": tuple(constructor_args["window_size"]),
        "mlp_ratio": float(constructor_args.get("mlp_ratio", 4.0)),
        "decoder_embed_dim": constructor_args["decoder_dim"],
        "decoder_depth": constructor_args["decoder_depth"],
        "decoder_num_heads": constructor_args["decoder_num_heads"],
        "norm_pix_loss": constructor_args.get("norm_pix_loss", True),
        "mixing": "pair",
        "mask_ratio": mask_ratio,
    }
