"""Prediction heads: decoders that turn encoder tokens into per-patch predictions."""

from mimkit.heads.local_decoder import LocalDecoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.multiscale_fusion import MultiScaleFusion

__all__ = ["LocalDecoder", "MultiScaleFusion", "MAEDecoder"]
