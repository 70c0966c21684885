"""Key mapping from the authors' LocalMIM ViT state dict (``models_mim.MaskedAutoencoderViT``) onto
:class:`mimkit.methods.localmim.LocalMIM` (parity README 6 and 7).

| official key                              | mimkit key                                   |
|-------------------------------------------|----------------------------------------------|
| ``cls_token``, ``patch_embed.*``, ``blocks.{i}.*`` | ``encoder.`` + same name             |
| ``norm.{k}.*`` for k < 3                  | ``tap_norms.{k}.*``                          |
| ``norm.3.*`` (the last tap, block depth-1) | ``encoder.norm.*``                          |
| ``decoder.{k}.{mask_token,embed,blocks,norm}*`` | ``decoders.{k}.tokens.`` + same name   |
| ``decoder.{k}.pred.{i}.*``                | ``decoders.{k}.head.{i}.*`` (same indices)   |
| ``hog_enc.{k}.conv.bias`` (``hog_bias``)  | row k of ``hog.bias``                        |
| ``pos_embed``, ``decoder.{k}.pos_embed``  | not loaded: fixed sin-cos tables, verified and recomputed |
| ``hog_enc.{k}.conv.weight``               | not loaded: fixed Sobel kernels, verified    |

A fine-tuning checkpoint (official ``models_vit``) holds the encoder keys plus ``fc_norm``/``head``, which are
dropped; it has no ``norm.3``, so load it with ``encoder_only`` (``encoder.norm`` keeps its init).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mimkit.official.checkpoint import check_sincos_table, load_converted_weights, rename_by_prefix
from mimkit.official.mae import mae_config_from_official
from mimkit.targets.hog import sobel_kernels

NUM_TAPS = 4
_PREFIXES = (
    ("cls_token", "encoder.cls_token"),
    ("patch_embed.", "encoder.patch_embed."),
    ("blocks.", "encoder.blocks."),
)
_TAP_NORM = re.compile(r"^norm\.(\d+)\.(.+)$")
_DECODER = re.compile(r"^decoder\.(\d+)\.(mask_token|embed\.|blocks\.|norm\.|pred\.)(.*)$")
_HOG = re.compile(r"^hog_enc\.(\d+)\.conv\.(weight|bias)$")
_FINETUNE_ONLY = ("head.", "fc_norm.")


def map_localmim_key(key: str) -> str | None:
    """mimkit's name for one official LocalMIM key; ``None`` for keys that are not loaded one to one."""
    if key == "pos_embed" or key.endswith(".pos_embed") or _HOG.match(key) or key.startswith(_FINETUNE_ONLY):
        return None
    if match := _TAP_NORM.match(key):
        tap, rest = int(match[1]), match[2]
        return f"encoder.norm.{rest}" if tap == NUM_TAPS - 1 else f"tap_norms.{tap}.{rest}"
    if match := _DECODER.match(key):
        part = "head." if match[2] == "pred." else f"tokens.{match[2]}"
        return f"decoders.{match[1]}.{part}{match[3]}"
    return rename_by_prefix(key, _PREFIXES, "LocalMIM")


def convert_localmim_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' keys to mimkit's; fixed tables and Sobel kernels are verified and dropped, HOG
    biases (``hog_bias=True``) are stacked into ``hog.bias``."""
    converted = {}
    biases = {}
    for key, value in state_dict.items():
        if key == "pos_embed" or key.endswith(".pos_embed"):
            check_sincos_table(key, value)
        elif match := _HOG.match(key):
            if match[2] == "bias":
                biases[int(match[1])] = value
            elif not torch.equal(value.float(), sobel_kernels()):
                raise ValueError(f"{key} is not the Sobel kernel pair mimkit's HOG uses")
        name = map_localmim_key(key)
        if name is not None:
            converted[name] = value
    if biases:
        converted["hog.bias"] = torch.stack([biases[k] for k in sorted(biases)])
    return converted


def load_localmim_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], encoder_only: bool = False) -> None:
    """Load an official LocalMIM state dict into a mimkit ``LocalMIM`` ViT model (strict on every expected key)."""
    load_converted_weights(model, convert_localmim_state_dict(state_dict), "LocalMIM", encoder_only)


def localmim_config_from_official(constructor_args: dict, mask_ratio: float = 0.75) -> dict:
    """Translate ``models_mim.MaskedAutoencoderViT`` constructor arguments into ``LocalMIMViTConfig`` fields:
    MAE's, plus the HOG options; the decoders use the encoder's MLP ratio, as in the authors' code."""
    fields = mae_config_from_official(constructor_args, mask_ratio)
    fields.update({key: constructor_args[key] for key in ("hog_nbins", "hog_bias") if key in constructor_args})
    fields.update(decoder_mlp_ratio=float(fields.get("mlp_ratio", 4.0)), target="hog")
    return fields
