"""The MAE implementations users pick instead of mimkit, built to compute what mimkit's MAE computes.

Each implementation is an ``nn.Module`` whose ``forward(images, noise)`` returns the pretraining loss, so
``mimkit bench --peers`` (:mod:`mimkit.bench_peers`) can time them the same way. ``noise`` ``(B, L)`` fixes the
mask as in mimkit (the tokens of smallest noise stay visible), and :func:`copy_mimkit_weights` loads a mimkit MAE's
weights into a peer, so the same images, mask and weights give the same loss:

- ``hf``: Hugging Face transformers' ``ViTMAEForPreTraining`` with SDPA attention and ``norm_pix_loss=True``. Its
  layout is the authors' (separate query/key/value projections instead of one ``qkv``), its masking takes the
  same ``noise`` and keeps the same ``int(L * (1 - ratio))`` tokens, and its loss is MAE's: per-patch normalized
  targets (unbiased variance, eps 1e-6 on the variance), mean squared error over the masked patches.
- ``lightly``: lightly's masked ViT on a timm ``VisionTransformer`` (``MaskedVisionTransformerTIMM``, fixed sin-cos
  positions) and its ``MaskedVisionTransformerDecoderTIMM``, which lightly 1.6 names as the replacement of the
  deprecated ``MAEDecoderTIMM`` (the same blocks and fixed sin-cos table; the decoder's input and output
  projections are plain linears next to it). The mask is lightly's index convention: ``idx_keep`` and ``idx_mask``
  count the class token as index 0, which is always kept. The loss is the one lightly's MAE example computes, with
  lightly's ``normalize_mean_var`` per patch as MAE's ``norm_pix_loss``: mean squared error between the
  predictions of the masked tokens only and their normalized patches. The decoder therefore projects only the
  masked tokens to pixels (mimkit and HF project every token and drop the visible ones in the loss): the loss is
  the same, the output projection's FLOPs are 75% of theirs.

Each peer's library is imported only when it is built; a missing one is a :class:`MimkitError` naming the extra.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import MimkitError
from mimkit.masking import num_visible_tokens
from mimkit.methods.mae import MAE
from mimkit.model_configs.mae import MAEConfig
from mimkit.model_configs.registry import model_config
from mimkit.official.checkpoint import rename_by_prefix

IMPLEMENTATIONS = ("mimkit", "hf", "lightly")
LIBRARIES = {"hf": "transformers", "lightly": "lightly"}
NOTES = {
    "mimkit": "reference",
    "hf": "transformers ViTMAEForPreTraining, SDPA attention",
    "lightly": "lightly masked timm ViT + decoder; pixels predicted for masked tokens only",
}


def peer_library(implementation: str) -> ModuleType:
    """Import the library of a peer, or say how to install it."""
    name = LIBRARIES[implementation]
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise MimkitError(
            f"--peers needs {name} ({err}); install the peers with `pip install 'mimkit[bench]'`"
        ) from err


def mae_config(model_name: str, **overrides: object) -> MAEConfig:
    """The :class:`MAEConfig` of a registered MAE model with ``overrides`` applied."""
    config = model_config(model_name, **overrides)
    if not isinstance(config, MAEConfig):
        raise MimkitError(f"{model_name} is not an MAE model; the peers implement MAE only")
    return config


class MimkitMAE(nn.Module):
    """mimkit's MAE, returning only the loss."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.model = MAE(config)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.model(images, noise=noise)["loss"]


class HuggingFaceMAE(nn.Module):
    """transformers' ``ViTMAEForPreTraining`` with SDPA attention, configured as ``config``."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        transformers = peer_library("hf")
        hf_config = transformers.ViTMAEConfig(
            hidden_size=config.embed_dim,
            num_hidden_layers=config.depth,
            num_attention_heads=config.num_heads,
            intermediate_size=int(config.embed_dim * config.mlp_ratio),
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=config.norm_eps,
            image_size=config.img_size,
            patch_size=config.patch_size,
            num_channels=config.in_chans,
            qkv_bias=True,
            decoder_hidden_size=config.decoder_embed_dim,
            decoder_num_hidden_layers=config.decoder_depth,
            decoder_num_attention_heads=config.decoder_num_heads,
            decoder_intermediate_size=int(config.decoder_embed_dim * config.mlp_ratio),
            mask_ratio=config.mask_ratio,
            norm_pix_loss=config.norm_pix_loss,
        )
        hf_config._attn_implementation = "sdpa"
        self.model = transformers.ViTMAEForPreTraining(hf_config)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images, noise=noise).loss


class LightlyMAE(nn.Module):
    """lightly's masked timm ViT and decoder, trained as lightly's MAE example trains them."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        peer_library("lightly")
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
        from timm.models.vision_transformer import VisionTransformer

        if not config.norm_pix_loss:
            raise MimkitError("the lightly peer is built with per-patch normalized targets (norm_pix_loss=True)")
        vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            num_classes=0,
        )
        self.mask_ratio = config.mask_ratio
        self.patch_size = config.patch_size
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.decoder_embed = nn.Linear(config.embed_dim, config.decoder_embed_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=config.decoder_embed_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_num_heads,
            mlp_ratio=config.mlp_ratio,
        )
        self.decoder_pred = nn.Linear(config.decoder_embed_dim, config.patch_size**2 * config.in_chans)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from lightly.models import utils

        idx_keep, idx_mask = self.token_indices(noise)
        encoded = self.backbone.encode(images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (len(images), self.backbone.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder_embed(encoded).type_as(tokens))
        decoded = self.decoder(tokens)
        pred = self.decoder_pred(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        return F.mse_loss(pred, utils.normalize_mean_var(target))

    def token_indices(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lightly's ``(idx_keep, idx_mask)`` for mimkit's ``noise``: index 0 is the class token, always kept;
        patch ``i`` is index ``i + 1``; the ``int(L * (1 - ratio))`` patches of smallest noise are kept."""
        keep = num_visible_tokens(noise.shape[1], self.mask_ratio) + 1
        class_first = torch.cat([noise.new_full((len(noise), 1), -1.0), noise], dim=1)
        order = torch.argsort(class_first, dim=1)
        return order[:, :keep], order[:, keep:]


def build_implementation(implementation: str, config: MAEConfig) -> nn.Module:
    """One implementation of the MAE of ``config``, with its own initialisation."""
    if implementation == "mimkit":
        return MimkitMAE(config)
    if implementation == "hf":
        return HuggingFaceMAE(config)
    if implementation == "lightly":
        return LightlyMAE(config)
    raise MimkitError(f"unknown MAE implementation '{implementation}'; known: {', '.join(IMPLEMENTATIONS)}")


_BLOCK = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)")
_HF_BLOCK_PARTS = {
    "norm1.": "layernorm_before.",
    "attn.proj.": "attention.output.dense.",
    "norm2.": "layernorm_after.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
_HF_NAMES = {
    "encoder.cls_token": "model.vit.embeddings.cls_token",
    "encoder.patch_embed.proj.": "model.vit.embeddings.patch_embeddings.projection.",
    "encoder.norm.": "model.vit.layernorm.",
    "encoder.blocks.": "model.vit.encoder.layer.",
    "decoder.embed.": "model.decoder.decoder_embed.",
    "decoder.mask_token": "model.decoder.mask_token",
    "decoder.norm.": "model.decoder.decoder_norm.",
    "decoder.pred.": "model.decoder.decoder_pred.",
    "decoder.blocks.": "model.decoder.decoder_layers.",
    "encoder.pos_embed.table": "model.vit.embeddings.position_embeddings",
    "decoder.pos_embed.table": "model.decoder.decoder_pos_embed",
}
_LIGHTLY_NAMES = {
    "encoder.cls_token": "backbone.vit.cls_token",
    "encoder.patch_embed.proj.": "backbone.vit.patch_embed.proj.",
    "encoder.norm.": "backbone.vit.norm.",
    "encoder.blocks.": "backbone.vit.blocks.",
    "decoder.embed.": "decoder_embed.",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.norm.": "decoder.norm.",
    "decoder.pred.": "decoder_pred.",
    "decoder.blocks.": "decoder.blocks.",
    "encoder.pos_embed.table": "backbone.vit.pos_embed",
    "decoder.pos_embed.table": "decoder.pos_embed",
}
_UNUSED_PEER_WEIGHTS = {"lightly": {"backbone.mask_token"}}
"""Peer weights with no counterpart that the MAE loss does not use (lightly's encoder mask token, for SimMIM-style
models)."""


def _mimkit_weights(model: MAE) -> dict[str, torch.Tensor]:
    """mimkit's parameters plus its fixed sin-cos tables, which the peers hold as frozen parameters."""
    weights = dict(model.state_dict())
    weights["encoder.pos_embed.table"] = model.encoder.pos_embed.table
    weights["decoder.pos_embed.table"] = model.decoder.pos_embed.table
    return weights


def peer_weights(model: MAE, implementation: str) -> dict[str, torch.Tensor]:
    """mimkit MAE weights under the peer's names (``hf`` splits each ``qkv`` into query, key and value)."""
    names = tuple((_HF_NAMES if implementation == "hf" else _LIGHTLY_NAMES).items())
    what = f"mimkit-to-{implementation}"
    converted = {}
    for key, value in _mimkit_weights(model).items():
        block = _BLOCK.fullmatch(key)
        if implementation == "hf" and block:
            prefix = rename_by_prefix(f"{block[1]}.blocks.{block[2]}.", names, what)
            part = block[3]
            if part.startswith("attn.qkv."):
                kind = part.removeprefix("attn.qkv.")
                for name, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    converted[f"{prefix}attention.attention.{name}.{kind}"] = chunk
                continue
            part = rename_by_prefix(part, tuple(_HF_BLOCK_PARTS.items()), what)
            converted[prefix + part] = value
        else:
            converted[rename_by_prefix(key, names, what)] = value
    return converted


def copy_mimkit_weights(model: MAE, peer: nn.Module, implementation: str) -> None:
    """Load ``model``'s weights into ``peer`` (built for the same config); every peer weight must be covered."""
    weights = peer_weights(model, implementation)
    own = peer.state_dict()
    unknown = set(weights) - set(own)
    uncovered = set(own) - set(weights) - _UNUSED_PEER_WEIGHTS.get(implementation, set())
    if unknown or uncovered:
        raise KeyError(f"weight mapping to {implementation}: unknown {sorted(unknown)}, uncovered {sorted(uncovered)}")
    with torch.no_grad():
        for key, value in weights.items():
            if own[key].shape != value.shape:  # copy_ would broadcast
                shapes = f"{tuple(own[key].shape)}, mimkit's {tuple(value.shape)}"
                raise ValueError(f"{implementation} weight {key}: shape {shapes}")
            own[key].copy_(value)
