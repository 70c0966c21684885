"""Encoders that run on the visible part of an image and double as fine-tuning backbones."""

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.vit import VisionTransformerEncoder

__all__ = ["ConvViTEncoder", "SwinEncoder", "VisionTransformerEncoder"]
