"""LocalMIM (Wang et al., "Masked Image Modeling with Local Multi-Scale Reconstruction", CVPR 2023).

Reconstruction at several encoder layers instead of the top one only: each tapped layer gets its own LayerNorm
and tiny decoder (one transformer block), and lower taps predict finer targets than upper ones (Sec. 3.3).
The loss is Eq. 2: ``sum_k w_k * loss_k``, each ``loss_k`` the mean squared error per target region averaged
over the masked regions of the whole batch at that tap's scale (regions partly masked count fractionally).
Numerics follow the authors' released ViT code (parity README 6).

Recipes (paper Sec. 4.1): ViT taps blocks [2, 4, 4+n, 6+n] (1-based; n = 6 for ViT-B, 18 for ViT-L) with
targets of 4, 8, 16 and 32 px regions (56^2 .. 7^2 at 224 px), decoders 256 wide with 8 heads. Hierarchical
encoders tap every stage output with targets at the stage's own scale, decoders 128 wide with 4 heads.

Ablations are config fields: ``taps`` (Table 4d/4e; repeat the last layer for Table 6's global reconstruction),
``target_cells`` (Table 4f, e.g. coarse-to-fine), ``target`` (Table 4a), ``gradient_isolation`` (Table 5) and
``fusion`` (Table 7: the taps' features fused into the last one, one decoder, one single-scale target).

The last tap's LayerNorm is the encoder's own final norm (the last tap is always the encoder's last layer), so
the encoder module keeps a final norm for fine-tuning and every parameter is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import TOKEN_SIZE, ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.taps import Tap, convvit_taps, swin_taps, vit_taps
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.heads.local_decoder import LocalDecoder
from mimkit.heads.tap_fusion import TapFusion
from mimkit.losses import masked_mse
from mimkit.masking import RandomMask, random_masking, resample_mask
from mimkit.methods.base import PretrainingModel
from mimkit.patches import grid_size
from mimkit.targets.hog import HOGTarget
from mimkit.targets.pixels import pixel_target


def _is_power_of_two(ratio: float) -> bool:
    return ratio > 0 and math.log2(ratio).is_integer()


@dataclass
class LocalMIMConfig:
    """Fields shared by every encoder. ``taps`` are 0-based block indices (ViT) or stage indices (ConvViT,
    Swin); ``target_cells`` the side in pixels of the regions each tap predicts; ``None`` = the paper's recipe."""

    img_size: int = 224
    in_chans: int = 3
    taps: tuple[int, ...] | None = None
    target: Literal["hog", "pixels"] = "hog"
    target_cells: tuple[int, ...] | None = None
    tap_weights: tuple[float, ...] | None = None
    hog_nbins: int = 18
    hog_bias: bool = False
    decoder_embed_dim: int = 256
    decoder_depth: int = 1
    decoder_num_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mask_ratio: float = 0.75
    gradient_isolation: bool = False
    fusion: bool = False
    drop_path_rate: float = 0.0

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
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.decoder_embed_dim % self.decoder_num_heads or self.decoder_embed_dim % 4:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} must be divisible by 4 and by decoder_num_heads"
            )
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
        if len(self.resolved_weights) != len(decoded) or min(self.resolved_weights) < 0:
            raise ValueError(f"tap_weights needs one non-negative weight per decoded tap ({len(decoded)})")
        if self.fusion and self.gradient_isolation:
            raise ValueError("fusion and gradient_isolation exclude each other: fused taps get no loss of their own")
        region = max(*cells, self.mask_unit)
        if self.img_size % region:
            raise ValueError(f"img_size={self.img_size} must be a multiple of {region} (the largest region)")


@dataclass
class LocalMIMViTConfig(LocalMIMConfig):
    """LocalMIM on a plain ViT; the default taps are the authors' ``[1, 3, depth-3, depth-1]``."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0

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
        if self.embed_dim % self.num_heads or self.embed_dim % 4:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by 4 and by num_heads={self.num_heads}")
        if self.patch_size % 4:
            raise ValueError(f"patch_size={self.patch_size} must be a multiple of 4")
        super().__post_init__()


@dataclass
class LocalMIMConvViTConfig(LocalMIMConfig):
    """LocalMIM on ConvMAE's ConvViT: taps on the outputs of its three stages (1/4, 1/8, 1/16)."""

    embed_dims: tuple[int, int, int] = (256, 384, 768)
    depths: tuple[int, int, int] = (2, 2, 11)
    num_heads: int = 12
    mlp_ratios: tuple[float, float, float] = (4.0, 4.0, 4.0)
    kernel_size: int = 5
    decoder_embed_dim: int = 128
    decoder_num_heads: int = 4

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

    def __post_init__(self) -> None:
        if self.embed_dims[2] % self.num_heads or self.embed_dims[2] % 4:
            raise ValueError(f"embed_dims[2]={self.embed_dims[2]} must be divisible by 4 and by num_heads")
        super().__post_init__()


@dataclass
class LocalMIMSwinConfig(LocalMIMConfig):
    """LocalMIM on the Swin encoder: taps after each stage (after its patch merging, as GreenMIM's Swin
    stages end), i.e. 1/8, 1/16, 1/32, 1/32; masking on 32x32 regions."""

    embed_dim: int = 128
    depths: tuple[int, int, int, int] = (2, 2, 18, 2)
    num_heads: tuple[int, int, int, int] = (4, 8, 16, 32)
    window_sizes: tuple[int, int, int, int] = (14, 14, 14, 7)
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 128
    decoder_num_heads: int = 4

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

    def __post_init__(self) -> None:
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ValueError(f"stage {stage} width {self.embed_dim * 2**stage} is not divisible by {heads} heads")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by 4 (sin-cos positions)")
        super().__post_init__()


ENCODERS = {
    LocalMIMViTConfig: VisionTransformerEncoder,
    LocalMIMConvViTConfig: ConvViTEncoder,
    LocalMIMSwinConfig: SwinEncoder,
}
TAP_READERS = {VisionTransformerEncoder: vit_taps, ConvViTEncoder: convvit_taps, SwinEncoder: swin_taps}


class LocalMIM(PretrainingModel):
    """LocalMIM pretraining model; ``model(images, noise=None)`` returns ``loss``, per decoded tap ``loss_tap{k}``,
    ``pred{k}``, ``target{k}``, ``mask{k}`` (the region weights at tap k's scale), and ``pred`` / ``mask`` (the
    last tap's prediction and the mask on the masking grid)."""

    def __init__(self, config: LocalMIMConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.patch_size = config.mask_unit
        self.taps = config.resolved_taps
        self.decoded_taps = config.decoded_taps
        self.cells = config.resolved_cells
        self.weights = config.resolved_weights
        self.encoder = encoder_from_config(ENCODERS[type(config)], config)
        self.read_taps = TAP_READERS[type(self.encoder)]
        widths = [config.tap_width(t) for t in self.taps]
        self.fusion = TapFusion(widths, [config.tap_stride(t) for t in self.taps]) if config.fusion else None
        decoded_widths = widths[-1:] if config.fusion else widths
        self.tap_norms = nn.ModuleList(nn.LayerNorm(w, eps=config.norm_eps) for w in decoded_widths[:-1])
        self.hog = HOGTarget(config.hog_nbins, len(self.cells), config.hog_bias) if config.target == "hog" else None
        self.decoders = nn.ModuleList()
        for tap, cell, width in zip(self.decoded_taps, self.cells, decoded_widths, strict=True):
            stride = config.tap_stride(tap)
            out_dim = config.in_chans * config.hog_nbins if self.hog is not None else cell * cell * config.in_chans
            self.decoders.append(
                LocalDecoder(
                    in_dim=width,
                    out_dim=out_dim,
                    scale=stride / cell,
                    embed_dim=config.decoder_embed_dim,
                    depth=config.decoder_depth,
                    num_heads=config.decoder_num_heads,
                    mlp_ratio=config.decoder_mlp_ratio,
                    norm_eps=config.norm_eps,
                    default_grid=config.img_size // stride,
                    num_prefix_tokens=1 if isinstance(self.encoder, VisionTransformerEncoder) else 0,
                )
            )

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], self.config.mask_unit)
        return (batch_size, gh * gw)

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def targets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One target per tap: HOG or per-region normalized pixels of ``target_cells`` regions (no_grad)."""
        if self.hog is not None:
            return self.hog(images, self.cells)
        return [pixel_target(images, cell, normalize=True) for cell in self.cells]

    def tap_norm(self, index: int) -> nn.Module:
        return self.tap_norms[index] if index < len(self.tap_norms) else self.encoder.norm

    def decode(self, index: int, tap: Tap, mask: RandomMask, mask_grid: tuple[int, int]) -> torch.Tensor:
        """Tap ``index``'s predictions for every target region, from its normed features."""
        features = self.tap_norm(index)(tap.features)
        decoder = self.decoders[index]
        if not tap.dense:
            return decoder(features, mask.ids_restore, tap.grid)
        factor = tap.grid[0] // mask_grid[0]
        return decoder.forward_dense(features, resample_mask(mask.mask, mask_grid, factor), tap.grid)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mask, encode the visible part, decode every tap and score the masked regions at each tap's scale.

        ``noise`` ``(B, L)`` on the masking grid fixes the mask (smallest noise = visible).
        """
        grid_size(images.shape[-2], images.shape[-1], max(*self.cells, self.config.mask_unit))
        mask_grid = grid_size(images.shape[-2], images.shape[-1], self.config.mask_unit)
        noise = self.masking_noise(images, noise, generator)
        mask = random_masking(noise, self.config.mask_ratio)
        taps = self.read_taps(self.encoder, images, mask, self.taps, self.config.gradient_isolation)
        if self.fusion is not None:
            taps = [self.fusion(taps, mask.ids_keep)]
        targets = self.targets(images)
        out: dict[str, torch.Tensor] = {"mask": mask.mask, "ids_restore": mask.ids_restore}
        weighted = []
        for k, (tap, target, cell, weight) in enumerate(zip(taps, targets, self.cells, self.weights, strict=True)):
            pred = self.decode(k, tap, mask, mask_grid)
            region_mask = resample_mask(mask.mask, mask_grid, self.config.mask_unit / cell)
            tap_loss, _ = masked_mse(pred, target.to(pred.dtype), region_mask)
            weighted.append(weight * tap_loss)
            out.update({f"loss_tap{k}": tap_loss, f"pred{k}": pred, f"target{k}": target, f"mask{k}": region_mask})
        out["loss"] = sum(weighted)
        out["pred"] = out[f"pred{len(taps) - 1}"]
        return out
