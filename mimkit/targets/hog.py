"""HOG targets at any cell size (LocalMIM appendix C, after MaskFeat; parity README 6).

Per colour channel of the (normalised) image: Sobel gradients with reflect padding, the unsigned orientation
of every pixel hard-binned into ``nbins`` bins of 180/nbins degrees, each pixel adding its whole gradient
magnitude to its bin; the bin maps are average-pooled over non-overlapping ``cell x cell`` windows and each
cell's histogram is L2-normalised (no block normalisation). A region's target is ``[R bins, G bins, B bins]``.

Computed in float32 whatever the model's precision (autocast is switched off), as the authors' code does:
orientation binning is a discontinuous function, so a float64 or bf16 histogram would differ from theirs wherever
a pixel sits near a bin edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.patches import grid_size

SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
"""Horizontal Sobel kernel (left minus right); its transpose is the vertical one (top minus bottom)."""


def sobel_kernels() -> torch.Tensor:
    """``(2, 1, 3, 3)``: channel 0 horizontal, channel 1 vertical gradient (cross-correlation)."""
    return torch.stack([SOBEL, SOBEL.t()])[:, None]


def gradient_magnitude(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """``sqrt(gx^2 + gy^2)`` rounded exactly as the authors' ``torch.norm(gradients, dim=1)``.

    That reduction sums the squares in float32 and takes a correctly rounded square root; torch's vectorised
    float32 ``sqrt`` is within 0.5 ulp but not always correctly rounded, so the root is taken in float64 and
    rounded once. Bit-identical to the norm at a fraction of its cost: the norm over a size-2, strided dimension
    runs a generic reduction (``benchmarks/hog_targets.py``).
    """
    return (gx * gx + gy * gy).double().sqrt().to(gx.dtype)


def orientation_histograms(
    images: torch.Tensor, nbins: int, bias: torch.Tensor | None = None, kernels: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, C, nbins, H, W)`` per-pixel histograms: each pixel's gradient magnitude in its orientation bin.

    ``bias`` ``(2,)`` is added to both gradient channels (the authors' ``hog_bias`` option).
    """
    b, c, h, w = images.shape
    x = images.float().reshape(b * c, 1, h, w)
    kernels = sobel_kernels().to(x.device) if kernels is None else kernels.float()
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernels, bias=bias)
    gx, gy = gradients.unbind(1)
    magnitude = gradient_magnitude(gx, gy)
    phase = torch.atan2(gx, gy)
    bins = torch.floor(phase / math.pi * nbins).long().remainder(nbins)
    histograms = torch.zeros(b * c, nbins, h, w, device=x.device, dtype=x.dtype)
    histograms.scatter_(1, bins[:, None], magnitude[:, None])
    return histograms.reshape(b, c, nbins, h, w)


def pool_cells(histograms: torch.Tensor, cell: int) -> torch.Tensor:
    """Average the per-pixel histograms over ``cell x cell`` windows, L2-normalise each cell's histogram
    per colour channel and lay the cells out as ``(B, cells, C * nbins)``, row-major."""
    b, c, nbins, h, w = histograms.shape
    gh, gw = grid_size(h, w, cell)
    pooled = F.avg_pool2d(histograms.reshape(b, c * nbins, h, w), cell, cell).reshape(b, c, nbins, gh, gw)
    pooled = F.normalize(pooled, dim=2)
    return pooled.permute(0, 3, 4, 1, 2).reshape(b, gh * gw, c * nbins)


class HOGTarget(nn.Module):
    """HOG targets of ``(B, C, H, W)`` images at several cell sizes, one tensor per cell size.

    With ``bias`` the authors' frozen random gradient biases (``hog_bias``, their ViT-L recipe) are kept per
    target, as a persistent buffer ``(targets, 2)`` so checkpoints carry them; without it one histogram map
    serves every cell size.
    """

    def __init__(self, nbins: int, num_targets: int, bias: bool = False) -> None:
        super().__init__()
        self.nbins = nbins
        self.register_buffer("kernels", sobel_kernels(), persistent=False)
        if bias:
            bound = 1 / 3  # PyTorch's default Conv2d bias init for a 3x3 single-channel kernel: U(-1/sqrt(9), ..)
            self.register_buffer("bias", torch.empty(num_targets, 2).uniform_(-bound, bound))
        else:
            self.bias = None

    def channels(self, in_chans: int) -> int:
        return in_chans * self.nbins

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def forward(self, images: torch.Tensor, cells: Sequence[int]) -> list[torch.Tensor]:
        if self.bias is None:
            histograms = orientation_histograms(images, self.nbins, kernels=self.kernels)
            return [pool_cells(histograms, cell) for cell in cells]
        return [
            pool_cells(orientation_histograms(images, self.nbins, self.bias[k].float(), self.kernels), cell)
            for k, cell in enumerate(cells)
        ]
