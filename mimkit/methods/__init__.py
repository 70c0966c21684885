"""Methods: each wires a backbone, a mask, heads and targets into a pretraining model returning a loss dict."""

from mimkit.methods.base import PretrainingModel
from mimkit.methods.convmae import ConvMAE, ConvMAEConfig
from mimkit.methods.mae import MAE, MAEConfig

__all__ = ["ConvMAE", "ConvMAEConfig", "MAE", "MAEConfig", "PretrainingModel"]
