"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners").

Random masking of 75% of the patches, a ViT encoder on the visible patches only, a light transformer
decoder that predicts every patch, and a mean-squared error on the masked patches against per-patch
normalized pixels (paper Sec. 3). Numerics follow the authors' released code (parity README 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.losses import masked_mse
from mimkit.masking import random_masking
from mimkit.methods.base import PretrainingModel
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target


@dataclass
class MAEConfig:
    """Architecture and loss of an MAE model; every field can be overridden in ``create_model``."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for width, heads, name in (
            (self.embed_dim, self.num_heads, "embed_dim"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim"),
        ):
            if width % heads or width % 4:
                raise ValueError(f"{name}={width} must be divisible by 4 and by its number of heads ({heads})")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}")


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
