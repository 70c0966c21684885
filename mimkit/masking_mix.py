"""MixMAE's mixing masks: which source image every 32x32 region of a mixed input comes from.

A :class:`MixMask` holds, for each mixed input, its K source images (batch indices) and a label per region of
the coarsest (1/32) grid saying which of the K it takes. Labels are drawn from explicit noise, like every mask
in mimkit, so runs replay exactly.

* ``pair_mix_mask`` reproduces the authors' released code (parity README 5): every image i is mixed with image
  B-1-i, one label map is shared by the whole batch, and the regions with the *smallest* noise come from the
  partner. B images give B mixed inputs, and every image is seen once as the primary and once as the partner,
  so every region of every image is reconstructed exactly once.
* ``kway_mix_mask`` is the paper's K-way mixing (Sec. 3.1, Table 8): consecutive groups of K images form one
  mixed input with its own labels, each image visible in about 1/K of the regions (K=4: mask ratio 0.75).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixMask:
    """sources: ``(M, K)`` batch indices of each mixed input's K images; labels: ``(M or 1, L)`` in ``[0, K)``."""

    sources: torch.Tensor
    labels: torch.Tensor

    @property
    def num_images(self) -> int:
        return self.sources.shape[1]

    def branch_masks(self) -> torch.Tensor:
        """``(K, M or 1, L)`` float: 1 where branch k's image is hidden (the region belongs to another image)."""
        k = torch.arange(self.num_images, device=self.labels.device)[:, None, None]
        return (self.labels.unsqueeze(0) != k).float()


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


def kway_mix_mask(noise: torch.Tensor, num_images: int) -> MixMask:
    """Per-input K-way mixing: images ``[jK, ..., jK+K-1]`` form input j, with labels from ``noise`` ``(B/K, L)``.

    Regions are ranked by noise and dealt out in K near-equal shares, so each image keeps ``~L/K`` regions.
    """
    if num_images < 2:
        raise ValueError(f"mixing needs at least 2 images, got num_images={num_images}")
    groups = noise.shape[0]
    sources = torch.arange(groups * num_images, device=noise.device).reshape(groups, num_images)
    labels = _noise_ranks(noise) * num_images // noise.shape[-1]
    return MixMask(sources=sources, labels=labels)
