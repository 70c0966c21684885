"""The parts every model configuration is composed of: an encoder (ViT, ConvViT or Swin), a pixel decoder, a
mask ratio and a pixel target. Each field, its range (its type) and its cross-field rules are written here once;
a method's configuration inherits the parts it uses and holds only what is its own.

Field names are the user-facing ones (``model.args.embed_dim`` in YAML, ``create_model(..., embed_dim=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mimkit.config_schema import Settings
from mimkit.config_types import Count, OpenUnit, Positive, ZeroToOne

TOKEN_SIZE = 16
"""Pixels per side of a ConvViT stage-3 token (the 4x4, 2x2 and 2x2 embeddings multiply to 16): its masking unit and
reconstruction patch."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The normalization of ImageNet-trained models and of the paper recipes."""
SWIN_REGION_SIZE = 32
"""Swin mixing regions and reconstruction patches are 32x32 pixels: one token of the last (1/32) stage."""


def check_heads(name: str, width: int, heads: int) -> None:
    """Attention widths split evenly into heads, and into the four sin-cos blocks of the position tables."""
    if width % heads or width % 4:
        raise ValueError(f"{name}={width} must be divisible by 4 and by its number of heads ({heads})")


def check_multiple(img_size: int, unit: int, what: str) -> None:
    if img_size % unit:
        raise ValueError(f"img_size={img_size} must be a multiple of {unit} ({what})")


@dataclass
class ImageFields(Settings):
    """What every encoder takes: square inputs of ``img_size`` with ``in_chans`` channels, and the stochastic
    depth rate used when it is fine-tuned."""

    img_size: Count = 224
    in_chans: Count = 3
    drop_path_rate: ZeroToOne = 0.0


@dataclass
class ViTFields(ImageFields):
    """A plain ViT (MAE's encoder): ``depth`` blocks of width ``embed_dim`` on ``patch_size`` patches."""

    patch_size: Count = 16
    embed_dim: Count = 768
    depth: Count = 12
    num_heads: Count = 12
    mlp_ratio: Positive = 4.0
    norm_eps: Positive = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads("embed_dim", self.embed_dim, self.num_heads)
        check_multiple(self.img_size, self.patch_size, f"patch_size={self.patch_size}")


@dataclass
class ConvViTFields(ImageFields):
    """ConvMAE's ConvViT: conv stages at 1/4 and 1/8, a transformer stage at 1/16 (Table 7's sizes)."""

    embed_dims: tuple[Count, Count, Count] = (256, 384, 768)
    depths: tuple[Count, Count, Count] = (2, 2, 11)
    num_heads: Count = 12
    mlp_ratios: tuple[Positive, Positive, Positive] = (4.0, 4.0, 4.0)
    kernel_size: Count = 5
    norm_eps: Positive = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads("embed_dims[2]", self.embed_dims[2], self.num_heads)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        check_multiple(self.img_size, TOKEN_SIZE, "the stage-3 token size")


@dataclass
class SwinFields(ImageFields):
    """MixMAE's Swin: four stages of widths ``embed_dim x (1, 2, 4, 8)`` with per-stage windows."""

    embed_dim: Count = 128
    depths: tuple[Count, Count, Count, Count] = (2, 2, 18, 2)
    num_heads: tuple[Count, Count, Count, Count] = (4, 8, 16, 32)
    window_sizes: tuple[Count, Count, Count, Count] = (14, 14, 14, 7)
    mlp_ratio: Positive = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for stage, heads in enumerate(self.num_heads):
            check_heads(f"stage {stage} width", self.embed_dim * 2**stage, heads)
        check_multiple(self.img_size, SWIN_REGION_SIZE, "the last stage's token size")


@dataclass
class DecoderFields(Settings):
    """A transformer decoder of ``decoder_depth`` blocks (MAE's: 8 blocks, 512 wide, 16 heads)."""

    decoder_embed_dim: Count = 512
    decoder_depth: Count = 8
    decoder_num_heads: Count = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads("decoder_embed_dim", self.decoder_embed_dim, self.decoder_num_heads)


@dataclass
class MaskFields(Settings):
    """The share of the input hidden from the encoder."""

    mask_ratio: OpenUnit = 0.75


@dataclass
class PixelTargetFields(Settings):
    """Pixels as the target, per patch normalized (MAE's ``norm_pix_loss``) or raw."""

    norm_pix_loss: bool = True
