"""Methods: each wires a backbone, a mask, heads and targets into a pretraining model returning a loss dict."""

from mimkit.methods.base import PretrainingModel
from mimkit.methods.convmae import ConvMAE, ConvMAEConfig
from mimkit.methods.localmim import LocalMIM, LocalMIMConvViTConfig, LocalMIMSwinConfig, LocalMIMViTConfig
from mimkit.methods.mae import MAE, MAEConfig
from mimkit.methods.mixmae import MixMAE, MixMAEConfig

__all__ = [
    "ConvMAE",
    "ConvMAEConfig",
    "LocalMIM",
    "LocalMIMConvViTConfig",
    "LocalMIMSwinConfig",
    "LocalMIMViTConfig",
    "MAE",
    "MAEConfig",
    "MixMAE",
    "MixMAEConfig",
    "PretrainingModel",
]
