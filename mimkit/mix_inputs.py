"""The pictures a MixMAE encoder sees: mixed images, or single images whose hidden regions are filled.

Mixing (the method) and the shuffle and zoom-in fills of the fill-content ablation (MixMAE Table 6) all
compose an input from whole regions of some picture, so they are done here in pixel space, before the patch
embedding. Because the embedding works on each 4x4 (Swin) or 16x16 (ViT) patch alone and regions are whole
patches, this equals composing the embedded tokens, which is what the authors' code does. The zero and
learnable fills replace tokens after the embedding instead (:meth:`MixingAutoencoder.fill_tokens`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimkit.masking_mix import MixMask
from mimkit.model_configs.mixmae import Fill
from mimkit.patches import grid_size, patchify, unpatchify

PIXEL_FILLS = ("shuffle", "zoomin")
"""Fills that take their content from pixels and therefore need noise of their own."""


def compose_inputs(
    images: torch.Tensor,
    mix: MixMask,
    region_size: int,
    fill: Fill = "mix",
    fill_noise: torch.Tensor | None = None,
    zoom_factor: float = 2.0,
) -> torch.Tensor:
    """``(M, C, H, W)`` encoder inputs from ``(B, C, H, W)`` images.

    Region l of input m shows region l of the source image its label names. A *filled* region shows, with
    ``fill='shuffle'``, another filled region of the same image (a random permutation of the filled regions),
    and with ``fill='zoomin'`` the same place of a zoomed-in random crop of the image; other fills leave the
    image's own pixels there, to be replaced after the embedding. ``fill_noise`` ``(B, L)`` drives the
    permutation and the crop position.
    """
    batch, channels, height, width = images.shape
    grid = grid_size(height, width, region_size)
    num_inputs, length = mix.sources.shape[0], grid[0] * grid[1]
    image_index = mix.sources.gather(1, mix.labels.expand(num_inputs, -1))
    region_index = torch.arange(length, device=images.device).expand(num_inputs, -1)
    pool = images
    if mix.filled is not None and fill in PIXEL_FILLS:
        if fill_noise is None:
            raise ValueError(f"fill='{fill}' needs fill noise")
        filled = mix.filled.expand(num_inputs, -1)
        if fill == "shuffle":
            region_index = shuffled_regions(filled, fill_noise)
        else:
            pool = torch.cat([images, zoomed_crops(images, fill_noise, zoom_factor)])
            image_index = torch.where(filled, image_index + batch, image_index)
    pixels = patchify(pool, region_size)[image_index, region_index]
    return unpatchify(pixels, region_size, grid, channels)


def shuffled_regions(filled: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` source region of every region: filled regions are permuted among themselves in the order of
    their ``noise``, the others keep their own place. Every row must have the same number of filled regions."""
    length = filled.shape[1]
    count = int(filled[0].sum())
    positions = torch.arange(length, device=filled.device).expand_as(filled)
    in_place_order = torch.argsort(torch.where(filled, positions, positions + length), dim=1)[:, :count]
    shuffled_order = torch.argsort(torch.where(filled, noise, noise + 2), dim=1)[:, :count]
    return positions.clone().scatter_(1, in_place_order, shuffled_order)


def zoomed_crops(images: torch.Tensor, noise: torch.Tensor, zoom_factor: float) -> torch.Tensor:
    """Each image enlarged ``zoom_factor`` times (bilinear) and cropped back to its size at a random place;
    the first and last entries of each row of ``noise`` give the vertical and horizontal offsets."""
    height, width = images.shape[-2:]
    zoomed = F.interpolate(
        images, size=(round(height * zoom_factor), round(width * zoom_factor)), mode="bilinear", align_corners=False
    )
    spare_h, spare_w = zoomed.shape[-2] - height, zoomed.shape[-1] - width
    tops = (noise[:, 0] * (spare_h + 1)).long().clamp(max=spare_h).tolist()
    lefts = (noise[:, -1] * (spare_w + 1)).long().clamp(max=spare_w).tolist()
    return torch.stack(
        [
            zoomed[i, :, top : top + height, left : left + width]
            for i, (top, left) in enumerate(zip(tops, lefts, strict=True))
        ]
    )
