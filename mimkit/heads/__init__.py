"""Prediction heads: decoders that turn encoder tokens into per-patch predictions."""

from mimkit.heads.mae_decoder import MAEDecoder

__all__ = ["MAEDecoder"]
