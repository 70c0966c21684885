"""``create_model``, ``create_encoder`` and the encoders behind each configuration type.

The named configurations live in :mod:`mimkit.model_configs.registry` (no torch needed to validate a config);
this module builds the models, at random or from pretrained weights (:mod:`mimkit.pretrained` reads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.video_convvit import VideoConvViTEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.convmae import ConvMAEConfig
from mimkit.model_configs.localmim import LocalMIMConvViTConfig, LocalMIMSwinConfig, LocalMIMViTConfig
from mimkit.model_configs.mae import MAEConfig
from mimkit.model_configs.mixmae import MixMAEConfig, MixMAEViTConfig
from mimkit.model_configs.registry import list_models, model_class, model_config, register_model
from mimkit.model_configs.videoconvmae import VideoConvMAEConfig
from mimkit.pretrained import build_pretraining_model, read_stored

__all__ = [
    "create_encoder",
    "create_model",
    "encoder_class",
    "list_models",
    "model_class",
    "model_config",
    "register_model",
]


def create_model(
    name: str, pretrained: str | Path | None = None, *, strict: bool = True, **overrides: Any
) -> PretrainingModel:
    """Build the pretraining model ``name``, e.g. ``create_model('mae_vit_base_patch16', mask_ratio=0.6)``.

    ``pretrained``: weights to start from, of that model: a mimkit checkpoint (its recorded configuration is used,
    with ``overrides`` on top), a folder written by ``save_pretrained``, an encoder written by ``mimkit export`` or
    an authors' released checkpoint (read through the key mapping of ``name``'s family). Every tensor of the model
    must be loaded and every stored one used, or a :class:`~mimkit.errors.CheckpointError` names them;
    ``strict=False`` loads what fits and reports the rest in ``model.load_report``.
    """
    stored = read_stored(pretrained, name) if pretrained is not None else None
    return build_pretraining_model(name, stored, strict, **overrides)


ENCODERS: dict[type, type[nn.Module]] = {
    MAEConfig: VisionTransformerEncoder,
    MixMAEViTConfig: VisionTransformerEncoder,
    LocalMIMViTConfig: VisionTransformerEncoder,
    ConvMAEConfig: ConvViTEncoder,
    LocalMIMConvViTConfig: ConvViTEncoder,
    MixMAEConfig: SwinEncoder,
    LocalMIMSwinConfig: SwinEncoder,
    VideoConvMAEConfig: VideoConvViTEncoder,
}
"""The encoder class behind each configuration type (MR-MAE's configs extend MAE's and ConvMAE's)."""


def encoder_class(name: str) -> type[nn.Module]:
    """The encoder class of model ``name``, from its configuration type."""
    config_type = type(model_config(name))
    return next(ENCODERS[c] for c in config_type.__mro__ if c in ENCODERS)


def create_encoder(
    name: str, pretrained: str | Path | None = None, *, strict: bool = True, **overrides: Any
) -> nn.Module:
    """The encoder of model ``name`` alone, as ``create_model(name, **overrides).encoder_module()`` would hold it,
    without building decoders, targets or teachers (fine-tuning, feature extraction, export).

    ``pretrained``: as for :func:`create_model`, the encoder's weights taken from any of those files (also a
    fine-tuning or probe checkpoint's encoder); ``strict`` likewise.
    """
    stored = read_stored(pretrained, name) if pretrained is not None else None
    args = stored.model_args(name, overrides) if stored is not None else overrides
    encoder = encoder_from_config(encoder_class(name), model_config(name, **args))
    if stored is not None:
        stored.load_into(encoder, strict, encoder=True)
    return encoder
