"""VideoConvMAE / VideoMCMAE (ConvMAE Sec. 2.4 and 3.4): ConvMAE on video clips.

A video ConvViT (cube embedding, masked 3-D conv stages, a transformer stage on the visible spatio-temporal
tokens), tube masking at 90% (VideoMAE's), ConvMAE's multi-scale fusion of the three stages (Eq. 1, the
strided convs applied per time step: stages 1-3 share the time axis), then a spatio-temporal transformer decoder
that predicts the normalized pixels of every ``2 x 16 x 16`` cube; the loss is MAE's, on the masked cubes.

Where the paper is silent (its appendix B is not available) mimkit follows VideoMAE's public conventions and
image ConvMAE's choices; ``docs/video.md`` lists them.
"""

from __future__ import annotations

import torch

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import TOKEN_SIZE
from mimkit.backbones.video_convvit import VideoConvViTEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.multiscale_fusion import MultiScaleFusion
from mimkit.losses import masked_mse
from mimkit.masking_video import video_masking, video_noise_shape
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.videoconvmae import VideoConvMAEConfig
from mimkit.patches_video import patchify_cubes
from mimkit.pos_embed_video import SpatioTemporalPositions
from mimkit.targets.pixels import normalized_pixels


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
