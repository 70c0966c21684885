"""ConvMAE / MCMAE (Gao et al., "ConvMAE: Masked Convolution Meets Masked Autoencoders").

A ConvViT encoder (conv stages at 1/4 and 1/8, transformer stage at 1/16), a block-wise mask made on the
stage-3 grid and upsampled to the conv stages, masked convolutions so masked regions never reach visible
features, the multi-scale decoder input of Eq. 1, then MAE's decoder and loss on the masked 16x16 patches.
Numerics follow the authors' released code (parity README 4).

Ablations of Tables 5 and 6 are fields of :class:`ConvMAEConfig`:

* ``masking="random"``: MAE's input-token random masking on the stage-1 grid (4x4-pixel tokens) instead of
  block-wise. Every stage-3 token is then partly visible, so stage 3 keeps all tokens (the paper's 1.7x
  FLOPs). Choices the paper leaves open: masked cells' stage-1 embeddings are zeroed and every depthwise
  conv input is masked, so no masked pixel reaches any feature; a stage-2 cell counts as visible when any
  of its four stage-1 cells is; the decoder gets every token (no mask tokens) and the loss averages the
  per-pixel error over the masked 4x4 cells.
* ``masked_conv=False``: the depthwise convs see every position, so visible tokens see masked pixels.
* ``kernel_size``: 5 (default), 7 or 9 in the conv stages.
* ``multiscale_decoder=False``: the decoder reads the stage-3 tokens alone.
"""

from __future__ import annotations

import torch

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import TOKEN_SIZE, ConvViTEncoder, ConvViTFeatures
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.multiscale_fusion import MultiScaleFusion
from mimkit.losses import masked_mse
from mimkit.masking import RandomMask, random_masking
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.convmae import ConvMAEConfig
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target

CELLS_PER_TOKEN = 4
"""Stage-1 cells per stage-3 token side (4x4-pixel cells in a 16x16 token)."""


class ConvMAE(PretrainingModel):
    """ConvMAE pretraining model; ``model(images, noise=None)`` returns ``loss``, ``pred``, ``mask`` and more."""

    patch_size = TOKEN_SIZE

    def __init__(self, config: ConvMAEConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.encoder = encoder_from_config(ConvViTEncoder, config)
        self.fusion = MultiScaleFusion(config.embed_dims) if config.multiscale_decoder else None
        self.decoder = MAEDecoder.for_pixels(
            config, config.embed_dims[2], TOKEN_SIZE, 0, config.norm_eps, config.resolved_decoder_mlp_ratio
        )

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], TOKEN_SIZE)
        cells = CELLS_PER_TOKEN**2 if self.config.masking == "random" else 1
        return (batch_size, gh * gw * cells)

    def encoder_module(self) -> ConvViTEncoder:
        return self.encoder

    def fused_latent(self, features: ConvViTFeatures) -> torch.Tensor:
        """The decoder's input: the normed stage-3 tokens, plus the stage-1/2 projections with the
        multi-scale decoder (Eq. 1)."""
        return self.encoder.norm(self.fusion(features) if self.fusion is not None else features.stage3)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mask, encode, fuse the stages, decode every 16x16 patch and score the masked ones.

        ``noise`` fixes the mask (smallest noise = visible): ``(B, L)`` on the stage-3 grid for block-wise
        masking, ``(B, 16 L)`` on the stage-1 grid for ``masking="random"``.
        """
        grid = grid_size(images.shape[-2], images.shape[-1], TOKEN_SIZE)
        noise = self.masking_noise(images, noise, generator)
        mask = random_masking(noise, self.config.mask_ratio)
        target = pixel_target(images, TOKEN_SIZE, self.config.norm_pix_loss)
        if self.config.masking == "random":
            return self._forward_random(images, mask, grid, target)
        conv_visibility = None
        if not self.config.skip_masked_regions and self.config.masked_conv:
            conv_visibility = (1 - mask.mask)[:, :, None, None].expand(-1, -1, CELLS_PER_TOKEN, CELLS_PER_TOKEN)
        features = self.encoder(
            images,
            ids_keep=mask.ids_keep,
            visibility=conv_visibility,
            dense_conv_stages=not (self.config.skip_masked_regions and self.config.masked_conv),
        )
        latent = self.fused_latent(features)
        pred = self.decoder(latent, mask.ids_restore, grid)
        loss, per_patch_loss = masked_mse(pred, target, mask.mask)
        return {
            "loss": loss,
            "pred": pred,
            "mask": mask.mask,
            "latent": latent,
            "ids_restore": mask.ids_restore,
            "per_patch_loss": per_patch_loss,
        }

    def _forward_random(
        self, images: torch.Tensor, mask: RandomMask, grid: tuple[int, int], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Table 5's input-token random masking: a mask on the 4x4-pixel cells, every stage-3 token kept."""
        batch = images.shape[0]
        gh, gw = grid
        r = CELLS_PER_TOKEN
        cell_mask = mask.mask.reshape(batch, gh, r, gw, r).transpose(2, 3).reshape(batch, gh * gw, r, r)
        features = self.encoder(images, visibility=1 - cell_mask, dense_conv_stages=True)
        latent = self.fused_latent(features)
        ids_restore = torch.arange(gh * gw, device=images.device).expand(batch, -1)
        pred = self.decoder(latent, ids_restore, grid)
        per_cell = (pred - target).pow(2).reshape(batch, gh * gw, r, TOKEN_SIZE // r, r, -1).mean(dim=(3, 5))
        loss = (per_cell * cell_mask).sum() / cell_mask.sum()
        return {
            "loss": loss,
            "pred": pred,
            "mask": mask.mask,
            "latent": latent,
            "ids_restore": ids_restore,
            "per_patch_loss": per_cell.mean(dim=(2, 3)),
        }
