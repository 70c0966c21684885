"""MixMAE's mixing masks: which source image every region of a mixed input comes from.

A :class:`MixMask` holds, for each mixed input, its K source images (batch indices) and a label per region of
the coarsest grid (32x32 pixels for Swin, one patch for ViT) saying which of the K it takes. Labels are drawn
from explicit noise, like every mask in mimkit, so runs replay exactly.

* ``pair_mix_mask`` reproduces the authors' released code (parity README 5): every image i is mixed with image
  B-1-i, one label map is shared by the whole batch, and the regions with the *smallest* noise come from the
  partner. B images give B mixed inputs, and every image is seen once as the primary and once as the partner,
  so every region of every image is reconstructed exactly once.
* ``kway_mix_mask`` is the paper's K-way mixing (Sec. 3.1, Table 8): consecutive groups of K images form one
  mixed input with its own labels, each image visible in about 1/K of the regions (K=4: mask ratio 0.75).
  With ``mask_token_share`` a share of the regions shows a [MASK] token instead of an image (Table 8, "2 w/ [M]").
* ``fill_mask`` is the single-image input of the fill-content ablation (Table 6): no partner, the hidden
  regions are filled with something else (zeros, a learnable token, shuffled or zoomed-in content).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixMask:
    """sources: ``(M, K)`` batch indices of each mixed input's K images; labels: ``(M or 1, L)`` in ``[0, K)``;
    filled: ``(M or 1, L)`` bool or ``None``: regions of a group that show fill content instead of its image."""

    sources: torch.Tensor
    labels: torch.Tensor
    filled: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return self.sources.shape[1]

    def branch_masks(self) -> torch.Tensor:
        """``(K, M or 1, L)`` float: 1 where branch k's image is hidden (another image's region, or filled)."""
        k = torch.arange(self.num_images, device=self.labels.device)[:, None, None]
        hidden = self.labels.unsqueeze(0) != k
        if self.filled is not None:
            hidden = hidden | self.filled.unsqueeze(0)
        return hidden.float()


def expand_regions(values: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """``(N, L)`` per-region values on a row-major ``grid`` to ``(N, gh*factor, gw*factor)`` (nearest)."""
    maps = values.reshape(values.shape[0], *grid)
    return maps.repeat_interleave(factor, 1).repeat_interleave(factor, 2)


def _noise_ranks(noise: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last axis (0 = smallest noise)."""
    return torch.argsort(torch.argsort(noise, dim=-1), dim=-1)


def pair_mix_mask(noise: torch.Tensor, batch_size: int, mask_ratio: float = 0.5) -> MixMask:
    """The authors' mixing: image i with image B-1-i, one label map for the batch from ``noise`` ``(L,)``.

    The ``int(L * mask_ratio)`` regions with the smallest noise take the partner (label 1).
    """
    if noise.dim() != 1:
        raise ValueError(
            f"pair mixing draws one label map per batch from noise of shape (L,), got {tuple(noise.shape)}"
        )
    index = torch.arange(batch_size, device=noise.device)
    sources = torch.stack([index, batch_size - 1 - index], dim=1)
    labels = (_noise_ranks(noise) < int(noise.shape[0] * mask_ratio)).long()
    return MixMask(sources=sources, labels=labels[None])


def kway_mix_mask(noise: torch.Tensor, num_images: int, mask_token_share: float = 0.0) -> MixMask:
    """Per-input K-way mixing: images ``[jK, ..., jK+K-1]`` form input j, with labels from ``noise`` ``(B/K, L)``.

    The ``L - int(L * mask_token_share)`` regions of smallest noise are dealt out by rank in K near-equal shares
    (each image keeps ``~L/K`` of them). The rest show the [MASK] token; they are dealt to the K groups in turn,
    so each image's group holds its own regions plus some [MASK] tokens, as in SimMIM-style masking.
    """
    if num_images < 2:
        raise ValueError(f"mixing needs at least 2 images, got num_images={num_images}")
    if not 0.0 <= mask_token_share < 1.0:
        raise ValueError(f"mask_token_share must be in [0, 1), got {mask_token_share}")
    groups, length = noise.shape
    showing = length - int(length * mask_token_share)
    sources = torch.arange(groups * num_images, device=noise.device).reshape(groups, num_images)
    ranks = _noise_ranks(noise)
    filled = ranks >= showing
    labels = torch.where(filled, ranks % num_images, ranks * num_images // showing)
    return MixMask(sources=sources, labels=labels, filled=filled if filled.any() else None)


def fill_mask(noise: torch.Tensor, mask_ratio: float) -> MixMask:
    """One input per image (no partner) from ``noise`` ``(B, L)``: its ``int(L * mask_ratio)`` regions of
    smallest noise are hidden and filled (the same convention as the partner regions of pair mixing)."""
    batch, length = noise.shape
    sources = torch.arange(batch, device=noise.device)[:, None]
    filled = _noise_ranks(noise) < int(length * mask_ratio)
    return MixMask(sources=sources, labels=torch.zeros_like(noise, dtype=torch.long), filled=filled)
