"""MixMAE (Lin et al., "MixMAE: Mixed and Masked Autoencoder for Efficient Pretraining of Hierarchical Vision
Transformers").

Instead of [MASK] tokens, the hidden regions of an image are filled with visible regions of other images. The
mixed input goes through an encoder whose attention stays inside each image's group (masked self-attention,
Sec. 3.3). The encoded tokens are then *unmixed*: for each source image a decoder branch keeps its tokens and
puts mask tokens everywhere else. The 8-block decoder reconstructs every image, and the loss covers each
image's hidden regions (dual reconstruction, Eq. 2). Numerics follow the authors' released code (parity README 5).

Mixing modes (``mixing``):
* ``pair`` (default, the authors' code): image i with image B-1-i, one label map per batch, mask ratio 0.5.
  B images give B mixed inputs; the loss is the mean over every region of every image.
* ``kway``: the paper's K-way mixing with a label map per mixed input (``num_images=4`` gives the paper's
  best mask ratio of 0.75, Table 8). B images give B/K mixed inputs; the loss covers each image's hidden regions.
  ``mask_token_share`` shows the [MASK] token in that share of the regions (Table 8, "2 w/ [M]").

Ablations as options: ``separation`` (Table 10: masked self-attention, mix embedding, or neither),
``fill`` (Table 6: what fills an image's hidden regions; anything but ``mix`` gives one input per image and no
partner), ``dual_reconstruction`` (Table 9). :class:`MixMAE` uses the Swin encoder of the paper,
:class:`MixMAEViT` the plain ViT of its appendix Table 17.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.losses import masked_mse
from mimkit.masking_mix import MixMask, expand_regions, fill_mask, kway_mix_mask, pair_mix_mask
from mimkit.methods.base import PretrainingModel
from mimkit.mix_inputs import PIXEL_FILLS, compose_inputs
from mimkit.model_configs.mixmae import MixingOptions, MixMAEConfig, MixMAEViTConfig
from mimkit.model_configs.parts import SWIN_REGION_SIZE
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target


class MixingAutoencoder(PretrainingModel):
    """The MixMAE pipeline for any encoder: mask from noise, compose inputs, encode with the images kept apart,
    unmix into one decoder branch per image, score each image's hidden regions.

    ``model(images, noise=None)`` returns ``loss``, ``pred`` (per original image), ``mask`` (per original image,
    1 = hidden in its first branch), ``x_rec`` (every branch: rows ``k*M .. (k+1)*M-1`` are branch k of the M
    inputs), ``hidden`` (the same rows' hidden regions), ``inputs`` (the pictures composed before the embedding)
    and the mixing (``mix_sources``, ``mix_labels``). Subclasses provide :meth:`embed` and :meth:`encode_mixed`.
    """

    def __init__(
        self,
        config: MixingOptions,
        encoder: nn.Module,
        stage_dims: Sequence[int],
        region_size: int,
        tokens_per_region: int,
        decoder: MAEDecoder,
    ) -> None:
        super().__init__()
        self.config = config
        self.in_chans = encoder.in_chans
        self.patch_size = region_size
        self.tokens_per_region = tokens_per_region
        self.encoder = encoder
        self.decoder = decoder
        if config.uses_fill_token:
            self.fill_token = nn.Parameter(trunc_normal_(torch.zeros(stage_dims[0]), std=0.02))
        if config.separation == "mix_embedding" and config.groups_per_input > 1:
            self.mix_embed = nn.ParameterList(
                nn.Parameter(trunc_normal_(torch.zeros(config.groups_per_input, dim), std=0.02)) for dim in stage_dims
            )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, h, w, C)`` before positions (``tokens_per_region`` per region side)."""
        raise NotImplementedError

    def encode_mixed(self, tokens: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """Encoder output ``(M, P + L, C)`` (P prefix tokens, one per group or none) with images kept apart by
        ``groups`` ``(M or 1, gh, gw)`` as ``config.separation`` says."""
        raise NotImplementedError

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], self.patch_size)
        if self.config.fill in PIXEL_FILLS:
            return (batch_size, 2, gh * gw)  # row 0 hides regions, row 1 drives the shuffle or the crop
        return (batch_size, gh * gw)

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def mix_mask(self, noise: torch.Tensor) -> MixMask:
        """The mixing of a batch from its noise (pair mode uses row 0, K-way every K-th row, fills every row)."""
        config = self.config
        batch = noise.shape[0]
        if config.fill != "mix":
            return fill_mask(noise[:, 0] if noise.dim() == 3 else noise, config.mask_ratio)
        if config.mixing == "pair":
            return pair_mix_mask(noise[0], batch, config.mask_ratio)
        k = config.num_images
        if batch % k:
            raise ValueError(f"K-way mixing needs a batch divisible by num_images={k}, got {batch} images")
        return kway_mix_mask(noise[::k], k, config.mask_token_share)

    def fill_tokens(self, tokens: torch.Tensor, mix: MixMask) -> torch.Tensor:
        """Put zeros or the learnable [MASK] token at the filled regions of ``(M, h, w, C)`` tokens (the pixel
        fills were already composed by :func:`compose_inputs`)."""
        if mix.filled is None or self.config.fill in PIXEL_FILLS:
            return tokens
        grid = (tokens.shape[1] // self.tokens_per_region, tokens.shape[2] // self.tokens_per_region)
        filled = expand_regions(mix.filled, grid, self.tokens_per_region).unsqueeze(-1)
        value = tokens.new_zeros(()) if self.config.fill == "zero" else self.fill_token
        return torch.where(filled, value, tokens)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mix, encode with the images kept apart, unmix into one decoder branch per source image, and score
        every image's hidden regions."""
        config = self.config
        grid = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        noise = self.masking_noise(images, noise, generator)
        mix = self.mix_mask(noise)
        fill_noise = noise[:, 1] if noise.dim() == 3 else None
        inputs = compose_inputs(images, mix, self.patch_size, config.fill, fill_noise, config.zoom_factor)
        tokens = self.fill_tokens(self.embed(inputs), mix)
        groups = mix.labels.reshape(-1, *grid) if mix.num_images > 1 else None
        latent = self.encode_mixed(tokens, groups)

        hidden = mix.branch_masks()
        sources = mix.sources
        if not config.dual_reconstruction:
            hidden, sources = hidden[:1], sources[:, :1]
        x = self.decoder.embed(latent)
        prefix_count = x.shape[1] - hidden.shape[-1]
        prefix, x = x[:, :prefix_count], x[:, prefix_count:]
        branches = x * (1 - hidden.unsqueeze(-1)) + self.decoder.mask_token * hidden.unsqueeze(-1)
        if prefix_count:
            branches = torch.cat([prefix.transpose(0, 1)[: hidden.shape[0], :, None], branches], dim=2)
        x_rec = self.decoder.decode(branches.flatten(0, 1), grid)

        branch_source = sources.t().reshape(-1)
        hidden = hidden.expand(-1, sources.shape[0], -1).flatten(0, 1)
        target = pixel_target(images, self.patch_size, config.norm_pix_loss)
        loss, per_patch_loss = masked_mse(x_rec, target[branch_source], hidden)
        pred, mask = unmix_predictions(x_rec, hidden, branch_source, images.shape[0])
        out = {
            "loss": loss,
            "pred": pred,
            "mask": mask,
            "latent": latent,
            "x_rec": x_rec,
            "hidden": hidden,
            "per_patch_loss": per_patch_loss,
            "inputs": inputs,
            "mix_sources": sources,
            "mix_labels": mix.labels,
        }
        if mix.filled is not None and config.fill not in PIXEL_FILLS:
            out["token_filled"] = mix.filled
        return out


class MixMAE(MixingAutoencoder):
    """MixMAE on the paper's Swin encoder (14x14 windows, no shift; Sec. 3.2)."""

    def __init__(self, config: MixMAEConfig) -> None:
        encoder = encoder_from_config(SwinEncoder, config)
        decoder = MAEDecoder.for_pixels(config, encoder.embed_dims[3], SWIN_REGION_SIZE, 0, norm_eps=1e-5)
        tokens_per_region = SWIN_REGION_SIZE // SwinEncoder.patch_size
        super().__init__(config, encoder, encoder.embed_dims, SWIN_REGION_SIZE, tokens_per_region, decoder)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(images)

    def encode_mixed(self, tokens: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        separation = self.config.separation
        embeddings = list(self.mix_embed) if separation == "mix_embedding" and groups is not None else None
        restrict = separation == "masked_attention"
        return self.encoder.encode(tokens, groups, restrict_attention=restrict, group_embeddings=embeddings)[0]


class MixMAEViT(MixingAutoencoder):
    """MixMAE on MAE's plain ViT (appendix Table 17): one mixing region per patch, global attention restricted
    to each image's group, and one class token per group, so each decoder branch gets its own image's class
    token in front (the encoder stays a standard one-class-token ViT for fine-tuning)."""

    def __init__(self, config: MixMAEViTConfig) -> None:
        encoder = encoder_from_config(VisionTransformerEncoder, config)
        decoder = MAEDecoder.for_pixels(config, config.embed_dim, config.patch_size, 1, config.norm_eps)
        super().__init__(config, encoder, (config.embed_dim,), config.patch_size, 1, decoder)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} input channels, got {images.shape[1]}")
        return self.encoder.patch_embed(images).reshape(images.shape[0], gh, gw, -1)

    def encode_mixed(self, tokens: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        encoder = self.encoder
        num_inputs, gh, gw, dim = tokens.shape
        num_groups = self.config.groups_per_input
        pos = encoder.pos_embed((gh, gw))
        cls = (encoder.cls_token + pos[:, :1]).expand(num_inputs, num_groups, -1)
        x = torch.cat([cls, tokens.reshape(num_inputs, gh * gw, dim) + pos[:, 1:]], dim=1)
        attn_mask = None
        if groups is not None:
            cls_labels = torch.arange(num_groups, device=groups.device).expand(groups.shape[0], -1)
            labels = torch.cat([cls_labels, groups.flatten(1)], dim=1)
            if self.config.separation == "mix_embedding":
                x = x + self.mix_embed[0][labels]
            if self.config.separation == "masked_attention":
                attn_mask = (labels[:, :, None] == labels[:, None, :]).unsqueeze(1)
        for block in encoder.blocks:
            x = block(x, attn_mask=attn_mask)
        return encoder.norm(x)


def unmix_predictions(
    x_rec: torch.Tensor, hidden: torch.Tensor, branch_source: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per original image: the prediction of every region and its mask.

    A region hidden in one of the image's branches takes that branch's prediction (the authors' un-mixing);
    a region visible in every branch takes the prediction of the image's first branch. ``mask`` is the image's
    hidden regions in its first branch (for the authors' pair mixing: the returned label map). An image that is
    no branch's source (single reconstruction) gets zeros.
    """
    rows = torch.arange(len(branch_source), device=branch_source.device)
    first = rows.new_zeros(batch_size).scatter_reduce(0, branch_source, rows, reduce="amin", include_self=False)
    present = (torch.bincount(branch_source, minlength=batch_size) > 0)[:, None]
    hidden_sum = torch.zeros(batch_size, hidden.shape[1], dtype=x_rec.dtype, device=x_rec.device)
    hidden_sum.index_add_(0, branch_source, hidden.to(x_rec.dtype))
    pred_sum = torch.zeros(batch_size, *x_rec.shape[1:], dtype=x_rec.dtype, device=x_rec.device)
    pred_sum.index_add_(0, branch_source, x_rec * hidden.to(x_rec.dtype).unsqueeze(-1))
    covered = (hidden_sum > 0).unsqueeze(-1)
    pred = torch.where(covered, pred_sum / hidden_sum.clamp(min=1).unsqueeze(-1), x_rec[first] * present[..., None])
    return pred, hidden[first] * present
