"""LocalMIM's configurations (Wang et al., CVPR 2023): taps, targets and tiny decoders on a ViT, ConvViT or Swin
encoder. ``None`` fields take the paper's recipe (Sec. 4.1, appendix C)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mimkit.config_types import Count, NonNegative, NonNegativeInt, Positive
from mimkit.model_configs.parts import (
    TOKEN_SIZE,
    ConvViTFields,
    DecoderFields,
    ImageFields,
    MaskFields,
    SwinFields,
    ViTFields,
)


def _is_power_of_two(ratio: float) -> bool:
    return ratio > 0 and math.log2(ratio).is_integer()


@dataclass
class LocalMIMConfig(ImageFields, DecoderFields, MaskFields):
    """Fields shared by every encoder. ``taps`` are 0-based block indices (ViT) or stage indices (ConvViT,
    Swin); ``target_cells`` the side in pixels of the regions each tap predicts; ``None`` = the paper's recipe."""

    taps: tuple[NonNegativeInt, ...] | None = None
    target: Literal["hog", "pixels"] = "hog"
    target_cells: tuple[Count, ...] | None = None
    tap_weights: tuple[NonNegative, ...] | None = None
    hog_nbins: Count = 18
    hog_bias: bool = False
    decoder_embed_dim: Count = 256
    decoder_depth: Count = 1
    decoder_num_heads: Count = 8
    decoder_mlp_ratio: Positive = 4.0
    gradient_isolation: bool = False
    fusion: bool = False

    tap_kind = "layer"
    mask_unit = 16
    """Side in pixels of a masking region."""

    def num_layers(self) -> int:
        raise NotImplementedError

    def default_taps(self) -> tuple[int, ...]:
        raise NotImplementedError

    def tap_stride(self, tap: int) -> int:
        """Pixels per position of the tap's feature grid."""
        raise NotImplementedError

    def tap_width(self, tap: int) -> int:
        raise NotImplementedError

    def default_cells(self, taps: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.tap_stride(t) for t in taps)

    @property
    def decoded_taps(self) -> tuple[int, ...]:
        """Taps with a decoder: all of them, or the last one alone with ``fusion``."""
        return self.resolved_taps[-1:] if self.fusion else self.resolved_taps

    @property
    def resolved_taps(self) -> tuple[int, ...]:
        return self.default_taps() if self.taps is None else tuple(self.taps)

    @property
    def resolved_cells(self) -> tuple[int, ...]:
        """One target region size per decoded tap."""
        if self.target_cells is not None:
            return tuple(self.target_cells)
        if self.fusion:
            return (self.tap_stride(self.resolved_taps[-1]),)
        return self.default_cells(self.resolved_taps)

    @property
    def resolved_weights(self) -> tuple[float, ...]:
        return (1.0,) * len(self.decoded_taps) if self.tap_weights is None else tuple(self.tap_weights)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hog_nbins < 2:
            raise ValueError(f"hog_nbins must be at least 2, got {self.hog_nbins}")
        taps = self.resolved_taps
        if not taps:
            raise ValueError("taps must name at least one layer")
        last = self.num_layers() - 1
        for tap in taps:
            if not 0 <= tap <= last:
                raise ValueError(f"taps: {self.tap_kind} index {tap} does not exist (0-based indices 0..{last})")
        if list(taps) != sorted(taps) or taps[-1] != last:
            raise ValueError(
                f"taps must be in increasing order and end with the last {self.tap_kind} ({last}): "
                f"{self.tap_kind}s after the last tap would get no gradient; got {list(taps)}"
            )
        if (
            self.target_cells is None
            and not self.fusion
            and self.taps is not None
            and len(taps) != len(self.default_taps())
        ):
            raise ValueError(f"target_cells must be given for {len(taps)} taps (one region size per tap)")
        decoded = self.decoded_taps
        cells = self.resolved_cells
        if len(cells) != len(decoded):
            raise ValueError(
                f"target_cells needs one region size per decoded tap ({len(decoded)}"
                f"{', the last one only with fusion' if self.fusion else ''}), got {list(cells)}"
            )
        for tap, cell in zip(decoded, cells, strict=True):
            if not _is_power_of_two(self.tap_stride(tap) / cell):
                raise ValueError(
                    f"target_cells: {cell} px regions cannot be reached from the {self.tap_stride(tap)} px grid "
                    f"of {self.tap_kind} {tap} by halving or doubling"
                )
        if len(self.resolved_weights) != len(decoded):
            raise ValueError(f"tap_weights needs one non-negative weight per decoded tap ({len(decoded)})")
        if self.fusion and self.gradient_isolation:
            raise ValueError("fusion and gradient_isolation exclude each other: fused taps get no loss of their own")
        region = max(*cells, self.mask_unit)
        if self.img_size % region:
            raise ValueError(f"img_size={self.img_size} must be a multiple of {region} (the largest region)")


@dataclass
class LocalMIMViTConfig(LocalMIMConfig, ViTFields):
    """LocalMIM on a plain ViT; the default taps are the authors' ``[1, 3, depth-3, depth-1]``."""

    tap_kind = "block"

    @property
    def mask_unit(self) -> int:
        return self.patch_size

    def num_layers(self) -> int:
        return self.depth

    def default_taps(self) -> tuple[int, ...]:
        return (1, 3, self.depth - 3, self.depth - 1)

    def tap_stride(self, tap: int) -> int:
        return self.patch_size

    def tap_width(self, tap: int) -> int:
        return self.embed_dim

    def default_cells(self, taps: tuple[int, ...]) -> tuple[int, ...]:
        """Fine to coarse: regions of p/4, p/2, p and 2p pixels (56^2, 28^2, 14^2, 7^2 at 224 px)."""
        p = self.patch_size
        return (p // 4, p // 2, p, 2 * p)

    def __post_init__(self) -> None:
        if self.patch_size % 4:  # before the tap checks, which read regions of patch_size / 4
            raise ValueError(f"patch_size={self.patch_size} must be a multiple of 4")
        super().__post_init__()


@dataclass
class LocalMIMConvViTConfig(LocalMIMConfig, ConvViTFields):
    """LocalMIM on ConvMAE's ConvViT: taps on the outputs of its three stages (1/4, 1/8, 1/16)."""

    decoder_embed_dim: Count = 128
    decoder_num_heads: Count = 4

    tap_kind = "stage"
    mask_unit = TOKEN_SIZE

    def num_layers(self) -> int:
        return 3

    def default_taps(self) -> tuple[int, ...]:
        return (0, 1, 2)

    def tap_stride(self, tap: int) -> int:
        return 4 * 2**tap

    def tap_width(self, tap: int) -> int:
        return self.embed_dims[tap]


@dataclass
class LocalMIMSwinConfig(LocalMIMConfig, SwinFields):
    """LocalMIM on the Swin encoder: taps after each stage (after its patch merging, as GreenMIM's Swin
    stages end), i.e. 1/8, 1/16, 1/32, 1/32; masking on 32x32 regions. ``norm_eps`` is the decoders' (the Swin
    encoder's own norms are fixed)."""

    decoder_embed_dim: Count = 128
    decoder_num_heads: Count = 4
    norm_eps: Positive = 1e-6

    tap_kind = "stage"
    mask_unit = 32

    def num_layers(self) -> int:
        return 4

    def default_taps(self) -> tuple[int, ...]:
        return (0, 1, 2, 3)

    def tap_stride(self, tap: int) -> int:
        return 8 * 2 ** min(tap, 2)

    def tap_width(self, tap: int) -> int:
        return self.embed_dim * 2 ** min(tap + 1, 3)
