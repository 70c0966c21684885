"""VideoConvMAE's configuration (ConvMAE Sec. 2.4, 3.4): ConvMAE's ConvViT on clips of ``num_frames`` frames with
``tubelet_size x 16 x 16`` cubes, tube masking, VideoMAE's decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mimkit.config_types import Count, OpenUnit, Positive
from mimkit.grids import grid_size, split_width
from mimkit.model_configs.parts import TOKEN_SIZE, ConvViTFields, DecoderFields, MaskFields, PixelTargetFields


@dataclass
class VideoConvMAEConfig(ConvViTFields, DecoderFields, MaskFields, PixelTargetFields):
    """Architecture, masking and loss of a VideoConvMAE model; every field can be overridden in ``create_model``.

    Defaults are VideoConvMAE-B: ConvMAE-B's encoder on 16-frame 224 px clips with ``2 x 16 x 16`` cubes, and
    VideoMAE-B's decoder (4 blocks, 384 wide, 6 heads), which the paper does not specify."""

    num_frames: Count = 16
    tubelet_size: Count = 2
    temporal_kernel_size: Count = 3
    decoder_embed_dim: Count = 384
    decoder_depth: Count = 4
    decoder_num_heads: Count = 6
    decoder_mlp_ratio: Positive = 4.0
    mask_ratio: OpenUnit = 0.9
    masking: Literal["tube", "random"] = "tube"
    multiscale_decoder: bool = True
    skip_masked_regions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, width in (("embed_dims[2]", self.embed_dims[2]), ("decoder_embed_dim", self.decoder_embed_dim)):
            try:
                split_width(width)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if self.temporal_kernel_size % 2 == 0:
            raise ValueError(f"temporal_kernel_size must be a positive odd number, got {self.temporal_kernel_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames={self.num_frames} must be a multiple of tubelet_size={self.tubelet_size}")

    def token_grid(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(T', gh, gw)`` for clips of ``num_frames`` frames of ``image_size``."""
        return (self.num_frames // self.tubelet_size, *grid_size(image_size[0], image_size[1], TOKEN_SIZE))
