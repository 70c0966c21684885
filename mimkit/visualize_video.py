"""Reconstruction pictures of clips: for each clip four rows of frames, original | masked | reconstruction |
reconstruction with the visible cubes pasted back (the image columns of :mod:`mimkit.visualize`, one frame per
column)."""

from __future__ import annotations

import torch

from mimkit.methods.base import PretrainingModel
from mimkit.patches_video import patchify_cubes, unpatchify_cubes


def cube_mask_to_pixels(mask: torch.Tensor, model: PretrainingModel, clips: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` cube mask to a ``(B, 1, T, H, W)`` pixel mask."""
    tubelet, p = model.tubelet_size, model.patch_size
    grid = (clips.shape[2] // tubelet, clips.shape[3] // p, clips.shape[4] // p)
    values = mask[:, :, None].expand(-1, -1, tubelet * p * p).contiguous()
    return unpatchify_cubes(values, tubelet, p, grid, 1)


def clip_prediction_pixels(model: PretrainingModel, clips: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-cube predictions as a clip, undoing the per-cube normalization of norm-pix targets."""
    tubelet, p = model.tubelet_size, model.patch_size
    pred = pred.float()
    if model.config.norm_pix_loss:
        cubes = patchify_cubes(clips, tubelet, p)
        pred = pred * (cubes.var(dim=-1, keepdim=True) + 1e-6).sqrt() + cubes.mean(dim=-1, keepdim=True)
    grid = (clips.shape[2] // tubelet, clips.shape[3] // p, clips.shape[4] // p)
    return unpatchify_cubes(pred, tubelet, p, grid, clips.shape[1])


def clip_rows(model: PretrainingModel, clips: torch.Tensor, out: dict) -> torch.Tensor:
    """``(4 B, T, C, H, W)`` tiles (normalized units): the four rows of every clip in turn."""
    mask = cube_mask_to_pixels(out["mask"].float(), model, clips)
    masked = clips * (1 - mask)
    recon = clip_prediction_pixels(model, clips, out["pred"])
    rows = torch.stack([clips, masked, recon, masked + recon * mask], dim=1)  # (B, 4, C, T, H, W)
    return rows.flatten(0, 1).transpose(1, 2)
