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

import torch
from torch import nn

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.taps import Tap, convvit_taps, swin_taps, vit_taps
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.heads.local_decoder import LocalDecoder
from mimkit.heads.tap_fusion import TapFusion
from mimkit.losses import masked_mse
from mimkit.masking import RandomMask, random_masking, resample_mask
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.localmim import LocalMIMConfig, LocalMIMConvViTConfig, LocalMIMSwinConfig, LocalMIMViTConfig
from mimkit.patches import grid_size
from mimkit.targets.hog import HOGTarget
from mimkit.targets.pixels import pixel_target

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
