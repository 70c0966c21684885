"""Masks: which tokens an encoder sees.

MAE's per-sample random masking (paper Sec. 3, parity README 2.4) is driven by an explicit noise tensor
so a run can be replayed exactly: the tokens with the *smallest* noise are kept, and they are gathered in
ascending-noise order (not spatial order), as the authors' code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomMask:
    """A per-sample random mask over ``L`` tokens.

    ids_keep: ``(B, K)`` indices of visible tokens, in ascending-noise order.
    ids_restore: ``(B, L)`` for each spatial position, its index in ``[visible..., masked...]``.
    mask: ``(B, L)`` float, 1 = masked (removed), 0 = visible.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    @property
    def num_visible(self) -> int:
        return self.ids_keep.shape[1]


def num_visible_tokens(num_tokens: int, mask_ratio: float) -> int:
    """``int(L * (1 - ratio))`` with Python float arithmetic, exactly as the authors compute it."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_tokens * (1 - mask_ratio)))


def random_masking(noise: torch.Tensor, mask_ratio: float) -> RandomMask:
    """Per-sample random mask from ``noise`` of shape ``(B, L)`` (uniform in [0, 1))."""
    if noise.dim() != 2:
        raise ValueError(f"noise must have shape (batch, tokens), got {tuple(noise.shape)}")
    return keep_smallest(noise, num_visible_tokens(noise.shape[1], mask_ratio))


def keep_smallest(noise: torch.Tensor, keep: int) -> RandomMask:
    """The mask that keeps, per sample, the ``keep`` tokens of smallest ``noise`` (``(B, L)``, any ordered dtype)."""
    batch, num_tokens = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_tokens, device=noise.device)
    mask.scatter_(1, ids_keep, 0.0)
    return RandomMask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select ``tokens[b, ids[b, k]]`` for ``(B, L, D)`` tokens and ``(B, K)`` indices."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def resample_mask(mask: torch.Tensor, grid: tuple[int, int], factor: float) -> torch.Tensor:
    """A ``(B, gh*gw)`` row-major mask read on a grid ``factor`` times finer (``factor`` >= 1: each cell becomes
    ``factor x factor`` cells) or coarser (``factor`` < 1: each coarse cell takes the *average* of the cells it
    covers, so a partly masked region gets a fractional weight, as LocalMIM's ``recal_mask``; parity README 6)."""
    b = mask.shape[0]
    cells = mask.reshape(b, 1, *grid)
    if factor >= 1:
        up = round(factor)
        cells = cells.repeat_interleave(up, dim=2).repeat_interleave(up, dim=3)
    else:
        down = round(1 / factor)
        cells = F.avg_pool2d(cells, down, down)
    return cells.reshape(b, -1)
