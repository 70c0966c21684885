"""MAE's configuration (He et al., Sec. 3): a ViT encoder, a pixel decoder, random masking, pixel targets."""

from __future__ import annotations

from dataclasses import dataclass

from mimkit.model_configs.parts import DecoderFields, MaskFields, PixelTargetFields, ViTFields


@dataclass
class MAEConfig(ViTFields, DecoderFields, MaskFields, PixelTargetFields):
    """Architecture and loss of an MAE model; every field can be overridden in ``create_model``."""
