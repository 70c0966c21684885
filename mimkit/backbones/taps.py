"""Reading the features of chosen layers or stages of each encoder under a mask (for LocalMIM's local decoders).

A :class:`Tap` is either *sparse* (the visible tokens in ``ids_keep`` order, after ``prefix`` class tokens, as
the ViT and ConvViT's transformer stage compute them) or *dense* (every position of the tap's grid, row-major;
what masked positions hold is never read by a decoder). Features are raw block/stage outputs (no norm).

How each encoder keeps masked regions out of visible features:

* ViT: only the visible tokens are encoded (MAE).
* ConvViT: the conv stages compute only the visible tokens' regions, stage 3 only the visible tokens (ConvMAE).
* Swin: every token is encoded, but attention is restricted to groups: all visible tokens form one group and
  each masked 32x32 region its own, so a visible token never attends to a masked one. Patch merging stays
  inside 32x32 regions and MLPs are per token, so visible features equal a visible-only computation. The cost
  is that masked tokens are computed too (4x the tokens at mask ratio 0.75); the stage outputs after patch
  merging are read with forward hooks, which also detach them for gradient isolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mimkit.backbones.convvit import ConvViTEncoder
from mimkit.backbones.swin import SwinEncoder
from mimkit.backbones.vit import VisionTransformerEncoder
from mimkit.masking import RandomMask
from mimkit.patches import grid_size


@dataclass
class Tap:
    """Features ``(B, prefix + K, C)`` (sparse) or ``(B, h*w, C)`` (dense) on a ``grid`` of ``(h, w)`` positions."""

    features: torch.Tensor
    grid: tuple[int, int]
    dense: bool
    prefix: int = 0


def vit_taps(
    encoder: VisionTransformerEncoder, images: torch.Tensor, mask: RandomMask, layers: Sequence[int], isolate: bool
) -> list[Tap]:
    """Outputs of blocks ``layers`` (0-based) over the class token and the visible tokens."""
    grid = grid_size(images.shape[-2], images.shape[-1], encoder.patch_size)
    _, outputs = encoder(images, ids_keep=mask.ids_keep, return_layers=layers, isolate_layers=isolate)
    return [Tap(x, grid, dense=False, prefix=1) for x in outputs]


def convvit_taps(
    encoder: ConvViTEncoder, images: torch.Tensor, mask: RandomMask, stages: Sequence[int], isolate: bool
) -> list[Tap]:
    """Outputs of stages ``stages`` (0: 1/4 conv stage, 1: 1/8 conv stage, 2: 1/16 transformer stage)."""
    isolate_after = [s for s in stages if s < 2] if isolate else []
    features = encoder(images, ids_keep=mask.ids_keep, isolate_after=isolate_after)
    gh, gw = features.conv_layout.grid
    taps = {
        0: Tap(features.conv_layout.to_map(features.stage1).flatten(1, 2), (gh * 4, gw * 4), dense=True),
        1: Tap(features.conv_layout.to_map(features.stage2).flatten(1, 2), (gh * 2, gw * 2), dense=True),
        2: Tap(features.stage3, (gh, gw), dense=False),
    }
    return [taps[s] for s in stages]


def region_groups(mask: RandomMask, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, gh, gw)`` group labels for :meth:`SwinEncoder.encode`: 0 for every visible region, ``1 + index``
    for each masked region, so visible tokens attend only to visible ones and each masked region only to itself."""
    index = torch.arange(1, mask.mask.shape[1] + 1, device=mask.mask.device)
    return torch.where(mask.mask.bool(), index, 0).reshape(-1, *grid)


def swin_taps(
    encoder: SwinEncoder, images: torch.Tensor, mask: RandomMask, stages: Sequence[int], isolate: bool
) -> list[Tap]:
    """Stage outputs after patch merging (1/8, 1/16, 1/32) for stages 0-2 and the last stage's output (1/32),
    the locations LocalMIM taps on Swin (Sec. 4.1: layers 2, 4, 22, 24 of Swin-B, scales 28, 14, 7, 7)."""
    gh, gw = grid_size(images.shape[-2], images.shape[-1], encoder.total_stride)
    merged: dict[int, torch.Tensor] = {}

    def reader(stage: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            merged[stage] = output
            return output.detach() if isolate else output

        return hook

    handles = [encoder.layers[s].downsample.register_forward_hook(reader(s)) for s in set(stages) if s < 3]
    try:
        _, maps = encoder.encode(encoder.embed(images), region_groups(mask, (gh, gw)))
    finally:
        for handle in handles:
            handle.remove()
    taps = []
    for s in stages:
        if s == 3:
            taps.append(Tap(maps[3].flatten(2).transpose(1, 2), (gh, gw), dense=True))
        else:
            size = 2 ** (2 - s)
            taps.append(Tap(merged[s].flatten(1, 2), (gh * size, gw * size), dense=True))
    return taps
