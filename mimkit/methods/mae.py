"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners").

Random masking of 75% of the patches, a ViT encoder on the visible patches only, a light transformer
decoder that predicts every patch, and a mean-squared error on the masked patches against per-patch
normalized pixels (paper Sec. 3). Numerics follow the authors' released code (parity README 3).
"""

from __future__ import annotations

import torch

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.losses import masked_mse
from mimkit.masking import random_masking
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.mae import MAEConfig
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target


class MAE(PretrainingModel):
    """MAE pretraining model; ``model(images, noise=None)`` returns ``loss``, ``pred``, ``mask`` and more."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        self.encoder = encoder_from_config(VisionTransformerEncoder, config)
        self.decoder = MAEDecoder.for_pixels(config, config.embed_dim, config.patch_size, 1, config.norm_eps)

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], self.patch_size)
        return (batch_size, gh * gw)

    def encoder_module(self) -> VisionTransformerEncoder:
        return self.encoder

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mask, encode the visible patches, decode every patch, and score the masked ones.

        ``noise`` ``(B, L)`` fixes the mask (smallest noise = visible); otherwise it is drawn with
        ``generator`` (or the global RNG).
        """
        grid = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        noise = self.masking_noise(images, noise, generator)
        mask = random_masking(noise, self.config.mask_ratio)
        latent = self.encoder(images, ids_keep=mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore, grid)
        target = pixel_target(images, self.patch_size, self.config.norm_pix_loss)
        loss, per_patch_loss = masked_mse(pred, target, mask.mask)
        return {
            "loss": loss,
            "pred": pred,
            "mask": mask.mask,
            "latent": latent,
            "ids_restore": mask.ids_restore,
            "per_patch_loss": per_patch_loss,
        }
