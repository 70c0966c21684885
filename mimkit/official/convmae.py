"""Key mapping from the authors' ConvMAE state dict (``models_convmae.MaskedAutoencoderConvViT``) onto
:class:`mimkit.methods.convmae.ConvMAE`.

| official key                                  | mimkit key                                      |
|-----------------------------------------------|-------------------------------------------------|
| ``patch_embed{1,2,3}.{proj,norm}.*``          | ``encoder.patch_embed{1,2,3}.{proj,norm}.*``     |
| ``patch_embed4.*``                            | ``encoder.patch_embed4.*``                      |
| ``blocks{1,2}.{i}.attn.*`` (depthwise conv)   | ``encoder.blocks{1,2}.{i}.dwconv.*``            |
| ``blocks{1,2}.{i}.{conv1,conv2,mlp.fc*}.weight`` ``(o,i,1,1)`` | same name, shape ``(o, i)`` (see below) |
| ``blocks{1,2}.{i}.{norm1,norm2}.*``, other ``.bias`` | same name under ``encoder.``             |
| ``blocks3.{i}.*``, ``norm.*``                 | ``encoder.blocks3.{i}.*``, ``encoder.norm.*``   |
| ``stage{1,2}_output_decode.*``                | ``fusion.stage{1,2}_proj.*``                    |
| ``mask_token``, ``decoder_{embed,blocks,norm,pred}.*`` | ``decoder.{mask_token,embed,blocks,norm,pred}.*`` |
| ``pos_embed``, ``decoder_pos_embed``          | not loaded: fixed sin-cos tables, verified and recomputed |

mimkit runs the conv stages' 1x1 convs as linear layers on channels-last rows, hence the reshape.
A fine-tuning checkpoint (official ``models_convvit.ConvViT``) holds the encoder keys only, plus ``head``
and ``fc_norm``, which are dropped. Its ``pos_embed`` was trainable there and is then not a sin-cos table:
:func:`convert_convmae_state_dict` refuses it rather than silently replacing it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mimkit.official.checkpoint import check_sincos_table, load_converted_weights, rename_by_prefix

_PREFIXES = (
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
    ("mask_token", "decoder.mask_token"),
    ("stage1_output_decode.", "fusion.stage1_proj."),
    ("stage2_output_decode.", "fusion.stage2_proj."),
    ("patch_embed", "encoder.patch_embed"),
    ("blocks", "encoder.blocks"),
    ("norm.", "encoder.norm."),
)
_FIXED_TABLES = ("pos_embed", "decoder_pos_embed")
_FINETUNE_ONLY = ("head.", "fc_norm.")
_CONV_BLOCK_ATTN = re.compile(r"^(blocks[12]\.\d+\.)attn\.")
_POINTWISE_CONV = re.compile(r"^blocks[12]\.\d+\.(conv1|conv2|mlp\.fc1|mlp\.fc2)\.weight$")


def map_convmae_key(key: str) -> str | None:
    """mimkit's name for one official ConvMAE key; ``None`` for keys that are not loaded."""
    if key in _FIXED_TABLES or key.startswith(_FINETUNE_ONLY):
        return None
    key = _CONV_BLOCK_ATTN.sub(r"\1dwconv.", key)
    return rename_by_prefix(key, _PREFIXES, "ConvMAE")


def convert_convmae_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and for 1x1 convs reshape) the authors' keys to mimkit's; fixed tables are verified and dropped."""
    converted = {}
    for key, value in state_dict.items():
        if key in _FIXED_TABLES:
            check_sincos_table(key, value)
        name = map_convmae_key(key)
        if name is None:
            continue
        converted[name] = value.flatten(1) if _POINTWISE_CONV.match(key) else value
    return converted


def load_convmae_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], encoder_only: bool = False) -> None:
    """Load an official ConvMAE state dict into a mimkit ConvMAE model (strict on every expected key)."""
    load_converted_weights(model, convert_convmae_state_dict(state_dict), "ConvMAE", encoder_only)


def convmae_config_from_official(constructor_args: dict, mask_ratio: float = 0.75) -> dict:
    """Translate ``MaskedAutoencoderConvViT`` constructor arguments into ``ConvMAEConfig`` fields.

    The authors' code only runs at 224 px, so ``img_size`` (a list of stage sizes there) becomes 224.
    """
    fields = {
        "embed_dims": tuple(constructor_args["embed_dim"]),
        "depths": tuple(constructor_args["depth"]),
        "num_heads": constructor_args["num_heads"],
        "mlp_ratios": tuple(float(r) for r in constructor_args["mlp_ratio"]),
        "decoder_embed_dim": constructor_args["decoder_embed_dim"],
        "decoder_depth": constructor_args["decoder_depth"],
        "decoder_num_heads": constructor_args["decoder_num_heads"],
        "norm_pix_loss": constructor_args.get("norm_pix_loss", False),
        "img_size": 224,
        "mask_ratio": mask_ratio,
    }
    norm_layer = str(constructor_args.get("norm_layer", ""))
    fields["norm_eps"] = float(norm_layer.split("eps=")[1].rstrip(")")) if "eps=" in norm_layer else 1e-5
    if "in_chans" in constructor_args:
        fields["in_chans"] = constructor_args["in_chans"]
    return fields
