"""Frozen teachers: images in the student's normalization in, patch features on the student's grid out.

A teacher has its own input size and normalization. :meth:`FrozenTeacher.forward` undoes the student's
normalization, resizes the crop to the teacher's side (bilinear, antialiased when shrinking), applies the
teacher's normalization, runs the network under ``torch.inference_mode`` (optionally in bf16 autocast) and
resamples the feature map and the [CLS] attention to the student's token grid (bilinear, align_corners=False;
nothing to do when the grids already agree, as for CLIP/DINO ViT-B/16 at 224 px and a /16 student at 224 px).
Subclasses implement :meth:`FrozenTeacher.extract` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.engine.precision import autocast


@dataclass(frozen=True)
class TeacherOutput:
    """features: ``(B, L, C)`` row-major on the student's grid; cls_attention: ``(B, L)`` or ``None``."""

    features: torch.Tensor
    cls_attention: torch.Tensor | None


class FrozenTeacher(nn.Module):
    """Base of the teacher adapters; always in eval mode, no parameter requires a gradient."""

    feature_dim: int
    has_cls_attention: bool = False

    def __init__(self, mean: Sequence[float], std: Sequence[float], img_size: int, bf16: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.img_size = img_size
        self.bf16 = bf16

    def freeze(self) -> FrozenTeacher:
        """Eval mode and ``requires_grad=False`` everywhere; returns ``self``."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        """A teacher never leaves eval mode (no dropout, frozen norm statistics)."""
        return super().train(False)

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, C, h, w)`` features and ``(B, h, w)`` [CLS] attention (or ``None``) of teacher-ready images."""
        raise NotImplementedError

    def prepare(self, images: torch.Tensor, student_mean: torch.Tensor, student_std: torch.Tensor) -> torch.Tensor:
        """The student's normalized crop as the teacher's input: its size, channels and normalization."""
        pixels = images.float() * student_std + student_mean
        if pixels.shape[1] == 1 and self.mean.shape[1] == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[1] != self.mean.shape[1]:
            raise ValueError(f"teacher expects {self.mean.shape[1]} input channels, got {pixels.shape[1]}")
        size = (self.img_size, self.img_size)
        if tuple(pixels.shape[-2:]) != size:
            shrink = pixels.shape[-2] > size[0] or pixels.shape[-1] > size[1]
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        return (pixels - self.mean) / self.std

    def forward(
        self,
        images: torch.Tensor,
        student_mean: torch.Tensor,
        student_std: torch.Tensor,
        grid: tuple[int, int],
    ) -> TeacherOutput:
        """Teacher features of the student's ``images`` on the student's ``grid`` (plain tensors, usable as
        loss targets and gather indices outside inference mode)."""
        with torch.inference_mode():
            inputs = self.prepare(images, student_mean.view(1, -1, 1, 1), student_std.view(1, -1, 1, 1))
            with autocast(inputs.device, "bf16" if self.bf16 else "fp32"):
                feature_map, attention = self.extract(inputs)
            features = resample_to_grid(feature_map.float(), grid).flatten(2).transpose(1, 2)
            if attention is not None:
                attention = resample_to_grid(attention.float().unsqueeze(1), grid).flatten(1)
        return TeacherOutput(features.clone(), attention.clone() if attention is not None else None)


def resample_to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` maps bilinearly resampled to ``grid`` (antialiased when shrinking); unchanged if equal."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    shrink = maps.shape[-2] > grid[0] or maps.shape[-1] > grid[1]
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False, antialias=shrink)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, C)`` row-major tokens as a ``(B, C, h, w)`` map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
