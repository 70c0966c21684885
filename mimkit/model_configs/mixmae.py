"""MixMAE's configurations (Liu et al.): mixing options shared by the Swin encoder (Sec. 3.2) and the plain ViT
(appendix Table 17)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mimkit.config_types import Above1, Count, OpenUnit, ZeroToOne
from mimkit.model_configs.parts import DecoderFields, MaskFields, PixelTargetFields, SwinFields, ViTFields

Separation = Literal["masked_attention", "mix_embedding", "none"]
Fill = Literal["mix", "zero", "learnable", "shuffle", "zoomin"]
"""What fills an image's hidden regions: other images (the method) or Table 6's alternatives."""


@dataclass
class MixingOptions(MaskFields, PixelTargetFields):
    """How inputs are mixed or filled, how the encoder tells the images apart, and the loss (shared by the
    Swin and ViT variants).

    ``separation``: ``masked_attention`` (the paper's choice), ``mix_embedding`` (a learned vector per image
    group added at the start of every stage) or ``none`` (Table 10's "w/o unmixing": the encoder gets no help).
    ``fill``: ``mix`` fills an image's hidden regions with other images (the method); ``zero``, ``learnable``,
    ``shuffle`` (its own hidden regions permuted) and ``zoomin`` (a crop of the image enlarged ``zoom_factor``
    times) give one input per image, hiding ``mask_ratio`` of its regions (Table 6); ``mixing`` and
    ``num_images`` are then unused. ``dual_reconstruction=False`` reconstructs only the first image of each mix.
    """

    mixing: Literal["pair", "kway"] = "pair"
    num_images: Count = 2
    mask_ratio: OpenUnit = 0.5
    mask_token_share: ZeroToOne = 0.0
    separation: Separation = "masked_attention"
    fill: Fill = "mix"
    zoom_factor: Above1 = 2.0
    dual_reconstruction: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixing == "pair" and self.num_images != 2:
            raise ValueError(f"mixing='pair' mixes exactly 2 images, got num_images={self.num_images}")
        if self.num_images < 2:
            raise ValueError(f"num_images must be at least 2, got {self.num_images}")
        if self.mask_token_share and (self.mixing != "kway" or self.fill != "mix"):
            raise ValueError("mask_token_share needs mixing='kway' and fill='mix' (Table 8's 'K images w/ [MASK]')")

    @property
    def groups_per_input(self) -> int:
        """Images (and decoder branches) per encoder input: 1 for the fill ablations."""
        return self.num_images if self.fill == "mix" else 1

    @property
    def uses_fill_token(self) -> bool:
        return self.fill == "learnable" or self.mask_token_share > 0


@dataclass
class MixMAEConfig(MixingOptions, SwinFields, DecoderFields):
    """Swin MixMAE: architecture (Sec. 3.2), mixing and loss; every field can be overridden in ``create_model``."""


@dataclass
class MixMAEViTConfig(MixingOptions, ViTFields, DecoderFields):
    """ViT MixMAE (appendix Table 17): mixing regions are the ViT's patches; MAE's ViT and decoder sizes."""
