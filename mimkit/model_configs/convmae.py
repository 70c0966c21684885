"""ConvMAE's configuration (Gao et al.): a ConvViT encoder, block-wise masking, the multi-scale decoder input.

The Table 5/6 ablations are fields: ``masking="random"`` (input-token random masking on 4x4-pixel cells),
``masked_conv=False``, ``kernel_size``, ``multiscale_decoder=False``; ``skip_masked_regions=False`` keeps the
dense reference path (``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mimkit.config_types import Positive
from mimkit.model_configs.parts import ConvViTFields, DecoderFields, MaskFields, PixelTargetFields


@dataclass
class ConvMAEConfig(ConvViTFields, DecoderFields, MaskFields, PixelTargetFields):
    """Architecture, masking and loss of a ConvMAE model; every field can be overridden in ``create_model``."""

    decoder_mlp_ratio: Positive | None = None
    masking: Literal["block", "random"] = "block"
    masked_conv: bool = True
    multiscale_decoder: bool = True
    skip_masked_regions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.masking == "random" and not self.masked_conv:
            raise ValueError("masking='random' needs masked_conv=True (otherwise every pixel is seen)")

    @property
    def resolved_decoder_mlp_ratio(self) -> float:
        """The authors' decoder takes the stage-1 MLP ratio (parity README 4, step 7) unless set explicitly."""
        return self.mlp_ratios[0] if self.decoder_mlp_ratio is None else self.decoder_mlp_ratio
