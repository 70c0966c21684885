"""Random-resized-crop boxes drawn from a generator, and how much a JPEG may be shrunk while decoding for a box.

:func:`draw_crop_box` draws the boxes of torchvision's ``RandomResizedCrop`` (the Inception crop MAE pretrains
with): up to ten tries of an area share uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``, placed
uniformly, else the whole image cut to the nearest allowed ratio. It makes the same draws, in the same order and
the same float precision, from ``generator`` (torch's global generator when None): with the same seed it returns
exactly torchvision's box. Taking a generator spares re-seeding and restoring the global generators per sample.

:func:`decode_reduction` is the rule of the fast JPEG path (see :class:`~mimkit.data.transforms.PretrainTransform`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

CROP_RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10
JPEG_REDUCTIONS = (8, 4, 2)


class CropBox(NamedTuple):
    """A crop in pixels of the full-size upright image."""

    left: int
    top: int
    width: int
    height: int


def draw_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> CropBox:
    """A random-resized-crop box of a ``width`` x ``height`` image (see the module's docstring)."""
    area = width * height
    log_ratio = _log_ratio(*ratio)
    for _ in range(ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = torch.randint(0, height - crop_h + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - crop_w + 1, size=(1,), generator=generator).item()
            return CropBox(left, top, crop_w, crop_h)
    image_ratio = width / height
    crop_w, crop_h = width, height
    if image_ratio < min(ratio):
        crop_h = round(width / min(ratio))
    elif image_ratio > max(ratio):
        crop_w = round(height * max(ratio))
    return CropBox((width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h)


@functools.cache
def _log_ratio(low: float, high: float) -> tuple[float, float]:
    """The bounds of the log aspect ratio, in float32 as torchvision computes them."""
    return tuple(torch.log(torch.tensor((low, high))).tolist())


def decode_reduction(box: CropBox, output_size: int) -> int:
    """The largest JPEG decode reduction ``s`` (8, 4, 2, else 1) after which ``box`` still spans at least
    ``output_size`` pixels in both directions: ``min(width, height) >= s * output_size``.

    Resizing the reduced crop to ``output_size`` then only shrinks (or keeps) it, as the full-size crop would: no
    detail is lost that the full decode would have kept."""
    for reduction in JPEG_REDUCTIONS:
        if min(box.width, box.height) >= reduction * output_size:
            return reduction
    return 1
