"""Reconstruction pictures: one row per image, columns original | masked | reconstruction |
reconstruction with the visible patches pasted back (as in MAE's Figure 2).

For mixing methods (MixMAE) a row is one encoder input: the mixed (or filled) image, then for each of its decoder
branches the source image and its reconstruction with the regions that branch kept pasted back.

LocalMIM (outputs with per-tap losses) predicts a target per tap. With normalized-pixel targets the row shows
the finest tap's reconstruction (its regions un-normalized with their true statistics); with HOG targets,
which are not pictures, the row is original | masked only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from mimkit.methods.base import PretrainingModel
from mimkit.patches import grid_size, patchify, unpatchify
from mimkit.visualize_video import clip_rows


@torch.no_grad()
def reconstruction_grid(
    model: PretrainingModel,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(rows, columns, C, H, W)`` tiles in [0, 1] for :func:`grid_picture`; ``(B, C, T, H, W)`` clips
    give four rows of frames per clip (:func:`~mimkit.visualize_video.clip_rows`)."""
    was_training = model.training
    model.eval()
    out = model(images, noise=noise)
    model.train(was_training)
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    if images.dim() == 5:
        return (clip_rows(model, images, out) * std_t[None] + mean_t[None]).clamp(0, 1)
    if "mix_sources" in out:
        columns = _mixed_input_columns(model, images, out)
    elif "loss_tap0" in out:
        columns = _local_columns(model, images, out)
    else:
        mask = mask_to_pixels(out["mask"].float(), tuple(images.shape[-2:]))
        masked = images * (1 - mask)
        columns = [images, masked]
        if getattr(model, "predicts_pixels", True):  # MR-MAE's high-level-only variant has no pixel decoder
            recon = _prediction_pixels(model, images, out["pred"])
            columns += [recon, masked + recon * mask]
    return torch.stack([(c * std_t + mean_t).clamp(0, 1) for c in columns], dim=1)


def _prediction_pixels(
    model: PretrainingModel, images: torch.Tensor, pred: torch.Tensor, patch_size: int | None = None
) -> torch.Tensor:
    """Per-patch predictions of ``images`` as pixels (undoing the per-patch normalization of norm-pix targets)."""
    p = patch_size or model.patch_size
    grid = grid_size(images.shape[-2], images.shape[-1], p)
    pred = pred.float()
    config = getattr(model, "config", None)
    if getattr(config, "norm_pix_loss", False) or getattr(config, "target", None) == "pixels":
        # Predictions are in per-patch normalized units; map them back with the true patch statistics.
        patches = patchify(images, p)
        mu = patches.mean(dim=-1, keepdim=True)
        sigma = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pred = pred * sigma + mu
    return unpatchify(pred, p, grid, images.shape[1])


def _mixed_input_columns(model: PretrainingModel, images: torch.Tensor, out: dict) -> list[torch.Tensor]:
    """The encoder's input (regions replaced by zeros or a [MASK] token drawn as zeros), then (source,
    reconstruction with the regions its branch kept pasted) for every decoder branch."""
    sources = out["mix_sources"]
    num_inputs = sources.shape[0]
    hw = tuple(images.shape[-2:])
    columns = [out["inputs"]]
    if "token_filled" in out:
        columns[0] = columns[0] * (1 - mask_to_pixels(out["token_filled"].float(), hw))
    for branch in range(sources.shape[1]):
        rows = slice(branch * num_inputs, (branch + 1) * num_inputs)
        source = images[sources[:, branch]]
        visible = 1 - mask_to_pixels(out["hidden"][rows].float(), hw)
        recon = _prediction_pixels(model, source, out["x_rec"][rows])
        columns += [source, source * visible + recon * (1 - visible)]
    return columns


def _local_columns(model: PretrainingModel, images: torch.Tensor, out: dict) -> list[torch.Tensor]:
    """Original, masked and, for pixel targets, the finest tap's reconstruction alone and pasted."""
    mask = mask_to_pixels(out["mask"].float(), tuple(images.shape[-2:]))
    masked = images * (1 - mask)
    if model.config.target != "pixels":
        return [images, masked]
    finest = min(range(len(model.cells)), key=lambda k: model.cells[k])
    recon = _prediction_pixels(model, images, out[f"pred{finest}"], model.cells[finest])
    return [images, masked, recon, masked + recon * mask]


def mask_to_pixels(mask: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """``(B, M)`` row-major mask on a square-cell grid to a ``(B, 1, H, W)`` pixel mask.

    The cell size is inferred from ``M``, so masks on any grid (16-px patches, ConvMAE's 4-px random cells)
    can be drawn.
    """
    h, w = image_hw
    cell = round((h * w / mask.shape[1]) ** 0.5)
    gh, gw = grid_size(h, w, cell)
    if gh * gw != mask.shape[1]:
        raise ValueError(f"a mask of {mask.shape[1]} cells does not tile a {h}x{w} image")
    cells = mask.reshape(-1, 1, gh, gw)
    return cells.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


def grid_picture(tiles: torch.Tensor) -> torch.Tensor:
    """``(rows, columns, C, H, W)`` tiles as one ``(3, H, W)`` picture in [0, 1], with 2-px white gaps."""
    return make_grid(tiles.flatten(0, 1), nrow=tiles.shape[1], padding=2, pad_value=1.0)


def save_picture(picture: torch.Tensor, path: str | Path) -> Path:
    """Write a ``(C, H, W)`` picture in [0, 1] as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(picture, str(path))
    return path


def save_reconstruction_grid(tiles: torch.Tensor, path: str | Path) -> Path:
    """Write ``(rows, columns, C, H, W)`` tiles as a PNG."""
    return save_picture(grid_picture(tiles), path)
