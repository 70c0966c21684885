"""MixMAE (Lin et al., "MixMAE: Mixed and Masked Autoencoder for Efficient Pretraining of Hierarchical Vision
Transformers").

Instead of [MASK] tokens, the hidden regions of an image are filled with visible regions of other images. The
mixed input goes through a Swin encoder whose attention stays inside each image's group (masked self-attention,
Sec. 3.3). The encoded tokens are then *unmixed*: for each source image a decoder branch keeps its tokens and
puts mask tokens everywhere else. The 8-block decoder reconstructs every image, and the loss covers each
image's hidden regions (dual reconstruction, Eq. 2). Numerics follow the authors' released code (parity README 5).

Mixing modes (``mixing``):
* ``pair`` (default, the authors' code): image i with image B-1-i, one label map per batch, mask ratio 0.5.
  B images give B mixed inputs; the loss is the mean over every region of every image.
* ``kway``: the paper's K-way mixing with a label map per mixed input (``num_images=4`` gives the paper's
  best mask ratio of 0.75, Table 8). B images give B/K mixed inputs; the loss covers each image's hidden regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mimkit.backbones.swin import SwinEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.losses import masked_mse
from mimkit.masking_mix import MixMask, kway_mix_mask, pair_mix_mask
from mimkit.methods.base import PretrainingModel
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target

REGION_SIZE = 32
"""Mixing regions and reconstruction patches are 32x32 pixels: one token of the last (1/32) stage."""


@dataclass
class MixMAEConfig:
    """Architecture, mixing and loss of a MixMAE model; every field can be overridden in ``create_model``."""

    img_size: int = 224
    in_chans: int = 3
    embed_dim: int = 128
    depths: tuple[int, int, int, int] = (2, 2, 18, 2)
    num_heads: tuple[int, int, int, int] = (4, 8, 16, 32)
    window_sizes: tuple[int, int, int, int] = (14, 14, 14, 7)
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mixing: Literal["pair", "kway"] = "pair"
    num_images: int = 2
    mask_ratio: float = 0.5
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.mixing == "pair" and self.num_images != 2:
            raise ValueError(f"mixing='pair' mixes exactly 2 images, got num_images={self.num_images}")
        if self.num_images < 2:
            raise ValueError(f"num_images must be at least 2, got {self.num_images}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ValueError(f"stage {stage} width {self.embed_dim * 2**stage} is not divisible by {heads} heads")
        if self.embed_dim % 4 or self.decoder_embed_dim % 4 or self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError("embed_dim and decoder_embed_dim must be divisible by 4, the latter by its heads")
        if self.img_size % REGION_SIZE:
            raise ValueError(f"img_size={self.img_size} must be a multiple of {REGION_SIZE}")


class MixMAE(PretrainingModel):
    """MixMAE pretraining model; ``model(images, noise=None)`` returns ``loss``, ``pred`` (per original image),
    ``mask`` (per original image, 1 = hidden in its primary mixed input) and the raw branch outputs."""

    patch_size = REGION_SIZE

    def __init__(self, config: MixMAEConfig) -> None:
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.encoder = SwinEncoder(
            in_chans=config.in_chans,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_sizes=config.window_sizes,
            mlp_ratio=config.mlp_ratio,
            img_size=config.img_size,
            drop_path_rate=config.drop_path_rate,
        )
        self.decoder = MAEDecoder(
            in_dim=self.encoder.embed_dims[3],
            out_dim=REGION_SIZE**2 * config.in_chans,
            embed_dim=config.decoder_embed_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            norm_eps=1e-5,
            default_grid=config.img_size // REGION_SIZE,
            num_prefix_tokens=0,
        )

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], REGION_SIZE)
        return (batch_size, gh * gw)

    def encoder_module(self) -> SwinEncoder:
        return self.encoder

    def mix_mask(self, noise: torch.Tensor) -> MixMask:
        """The mixing of a batch from its ``(B, L)`` noise (pair mode uses row 0, K-way every K-th row)."""
        batch = noise.shape[0]
        if self.config.mixing == "pair":
            return pair_mix_mask(noise[0], batch, self.config.mask_ratio)
        k = self.config.num_images
        if batch % k:
            raise ValueError(f"K-way mixing needs a batch divisible by num_images={k}, got {batch} images")
        return kway_mix_mask(noise[::k], k)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mix, encode with group-restricted attention, unmix into one decoder branch per source image,
        and score every image's hidden regions."""
        gh, gw = grid_size(images.shape[-2], images.shape[-1], REGION_SIZE)
        noise = self.masking_noise(images, noise, generator)
        mix = self.mix_mask(noise)
        groups = mix.labels.reshape(-1, gh, gw)

        tokens = self.encoder.embed(images)
        mixed = mix_tokens(tokens, mix, groups)
        latent, _ = self.encoder.encode(mixed, groups)

        x = self.decoder.embed(latent)
        hidden = mix.branch_masks().unsqueeze(-1)
        branches = x * (1 - hidden) + self.decoder.mask_token * hidden
        x_rec = self.decoder.decode(branches.flatten(0, 1), (gh, gw))

        branch_source = mix.sources.t().reshape(-1)
        hidden = hidden.squeeze(-1).expand(-1, mix.sources.shape[0], -1).flatten(0, 1)
        target = pixel_target(images, REGION_SIZE, self.config.norm_pix_loss)
        loss, per_patch_loss = masked_mse(x_rec, target[branch_source], hidden)
        pred, mask = unmix_predictions(x_rec, hidden, branch_source, images.shape[0])
        return {
            "loss": loss,
            "pred": pred,
            "mask": mask,
            "latent": latent,
            "x_rec": x_rec,
            "per_patch_loss": per_patch_loss,
            "mix_sources": mix.sources,
            "mix_labels": mix.labels,
        }


def mix_tokens(tokens: torch.Tensor, mix: MixMask, groups: torch.Tensor) -> torch.Tensor:
    """Mixed inputs ``(M, h, w, C)``: every token taken from the source image its region is labelled with.

    ``tokens`` ``(B, h, w, C)`` are per-image patch tokens; ``groups`` ``(M or 1, H/32, W/32)`` the labels.
    Selecting tokens equals mixing the pixels in 32x32 regions, because the patch embedding is per 4x4 patch.
    """
    b, h, w, c = tokens.shape
    factor = h // groups.shape[1]
    labels = groups.repeat_interleave(factor, 1).repeat_interleave(factor, 2).reshape(groups.shape[0], h * w)
    source = mix.sources.gather(1, labels.expand(mix.sources.shape[0], -1))
    positions = torch.arange(h * w, device=tokens.device)
    return tokens.reshape(b, h * w, c)[source, positions].reshape(-1, h, w, c)


def unmix_predictions(
    x_rec: torch.Tensor, hidden: torch.Tensor, branch_source: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per original image: the prediction of every region and its mask.

    A region hidden in one of the image's branches takes that branch's prediction (the authors' un-mixing);
    a region visible in every branch takes the prediction of the image's first branch. ``mask`` is the image's
    hidden regions in its first branch (for the authors' pair mixing: the returned label map).
    """
    counts = torch.bincount(branch_source, minlength=batch_size)
    first = torch.argsort(branch_source, stable=True)[torch.cumsum(counts, 0) - counts]
    hidden_sum = torch.zeros(batch_size, hidden.shape[1], dtype=x_rec.dtype, device=x_rec.device)
    hidden_sum.index_add_(0, branch_source, hidden.to(x_rec.dtype))
    pred_sum = torch.zeros(batch_size, *x_rec.shape[1:], dtype=x_rec.dtype, device=x_rec.device)
    pred_sum.index_add_(0, branch_source, x_rec * hidden.unsqueeze(-1))
    covered = (hidden_sum > 0).unsqueeze(-1)
    pred = torch.where(covered, pred_sum / hidden_sum.clamp(min=1).unsqueeze(-1), x_rec[first])
    return pred, hidden[first]
