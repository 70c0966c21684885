"""VideoConvMAE / VideoMCMAE (ConvMAE Sec. 2.4 and 3.4): ConvMAE on video clips.

A video ConvViT (cube embedding, masked 3-D conv stages, a transformer stage on the visible spatio-temporal
tokens), tube masking at 90% (VideoMAE's), ConvMAE's multi-scale fusion of the three stages (Eq. 1, the
strided convs applied per time step: stages 1-3 share the time axis), then a spatio-temporal transformer decoder
that predicts the normalized pixels of every ``2 x 16 x 16`` cube; the loss is MAE's, on the masked cubes.

Where the paper is silent (its appendix B is not available) mimkit follows VideoMAE's public conventions and
image ConvMAE's choices; ``docs/video.md`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import TOKEN_SIZE
from mimkit.backbones.video_convvit import VideoConvViTEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.multiscale_fusion import MultiScaleFusion
from mimkit.losses import masked_mse
from mimkit.masking_video import video_masking, video_noise_shape
from mimkit.methods.base import PretrainingModel
from mimkit.patches import grid_size
from mimkit.patches_video import patchify_cubes
from mimkit.pos_embed_video import SpatioTemporalPositions, split_width
from mimkit.targets.pixels import normalized_pixels


@dataclass
class VideoConvMAEConfig:
    """Architecture, masking and loss of a VideoConvMAE model; every field can be overridden in ``create_model``.

    Defaults are VideoConvMAE-B: ConvMAE-B's encoder on 16-frame 224 px clips with ``2 x 16 x 16`` cubes, and
    VideoMAE-B's decoder (4 blocks, 384 wide, 6 heads), which the paper does not specify."""

    img_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dims: tuple[int, int, int] = (256, 384, 768)
    depths: tuple[int, int, int] = (2, 2, 11)
    num_heads: int = 12
    mlp_ratios: tuple[float, float, float] = (4.0, 4.0, 4.0)
    kernel_size: int = 5
    temporal_kernel_size: int = 3
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    decoder_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mask_ratio: float = 0.9
    masking: Literal["tube", "random"] = "tube"
    multiscale_decoder: bool = True
    skip_masked_regions: bool = True
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.embed_dims[2] % self.num_heads:
            raise ValueError(f"embed_dims[2]={self.embed_dims[2]} must be divisible by num_heads={self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} must be divisible by decoder_num_heads"
                f"={self.decoder_num_heads}"
            )
        for name, width in (("embed_dims[2]", self.embed_dims[2]), ("decoder_embed_dim", self.decoder_embed_dim)):
            try:
                split_width(width)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        for name in ("kernel_size", "temporal_kernel_size"):
            value = getattr(self, name)
            if value % 2 == 0 or value < 1:
                raise ValueError(f"{name} must be a positive odd number, got {value}")
        if self.img_size % TOKEN_SIZE:
            raise ValueError(f"img_size={self.img_size} must be a multiple of {TOKEN_SIZE}")
        if self.tubelet_size < 1 or self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames={self.num_frames} must be a multiple of tubelet_size={self.tubelet_size}")

    def token_grid(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(T', gh, gw)`` for clips of ``num_frames`` frames of ``image_size``."""
        return (self.num_frames // self.tubelet_size, *grid_size(image_size[0], image_size[1], TOKEN_SIZE))


class VideoConvMAE(PretrainingModel):
    """VideoConvMAE pretraining model; ``model(clips, noise=None)`` on ``(B, C, T, H, W)`` clips returns ``loss``,
    ``pred`` ``(B, L, tubelet*16*16*C)``, ``mask`` ``(B, L)`` (1 = masked) over the ``L = T'*gh*gw`` cubes, and more."""

    patch_size = TOKEN_SIZE

    def __init__(self, config: VideoConvMAEConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.tubelet_size = config.tubelet_size
        self.encoder = encoder_from_config(VideoConvViTEncoder, config)
        self.fusion = MultiScaleFusion(config.embed_dims) if config.multiscale_decoder else None
        self.decoder = MAEDecoder(
            in_dim=config.embed_dims[2],
            out_dim=config.tubelet_size * TOKEN_SIZE**2 * config.in_chans,
            embed_dim=config.decoder_embed_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_num_heads,
            mlp_ratio=config.decoder_mlp_ratio,
            norm_eps=config.norm_eps,
            default_grid=config.img_size // TOKEN_SIZE,
            num_prefix_tokens=0,
        )
        image_grid = (config.img_size, config.img_size)
        self.decoder.pos_embed = SpatioTemporalPositions(config.decoder_embed_dim, config.token_grid(image_grid))

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        return video_noise_shape(self.config.masking, batch_size, self.config.token_grid(image_size))

    def encoder_module(self) -> VideoConvViTEncoder:
        return self.encoder

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mask, encode the visible cubes, fuse the stages, decode every cube and score the masked ones.

        ``images`` are clips ``(B, C, num_frames, H, W)``; ``noise`` fixes the mask (smallest noise = visible):
        ``(B, gh*gw)`` for tube masking, ``(B, T'*gh*gw)`` for random masking."""
        grid = self.encoder.token_grid(images)
        if images.shape[2] != self.config.num_frames:
            raise ValueError(f"the model takes clips of {self.config.num_frames} frames, got {images.shape[2]}")
        noise = self.masking_noise(images, noise, generator)
        mask = video_masking(self.config.masking, noise, grid[0], self.config.mask_ratio)
        with torch.no_grad():
            cubes = patchify_cubes(images, self.tubelet_size, TOKEN_SIZE)
            target = normalized_pixels(cubes) if self.config.norm_pix_loss else cubes
        features = self.encoder(images, mask.ids_keep, dense_conv_stages=not self.config.skip_masked_regions)
        latent = self.encoder.norm(self.fusion(features) if self.fusion is not None else features.stage3)
        pred = self.decoder(latent, mask.ids_restore, grid)
        loss, per_cube_loss = masked_mse(pred, target, mask.mask)
        return {
            "loss": loss,
            "pred": pred,
            "mask": mask.mask,
            "latent": latent,
            "ids_restore": mask.ids_restore,
            "per_patch_loss": per_cube_loss,
        }
