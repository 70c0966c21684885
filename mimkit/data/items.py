"""What one item of data given in memory becomes: an 8-bit PIL image by :mod:`mimkit.data.decode`'s rules, and a
class index. Used for a user's ``torch.utils.data.Dataset`` and for Hugging Face ``datasets`` columns.

Images may be PIL images (any mode :func:`~mimkit.data.decode.to_8bit` reads), uint8 arrays ``(H, W)`` or
``(H, W, C)`` with C 1, 3 or 4 (channels last, as Pillow and NumPy image code use), or tensors ``(C, H, W)`` with C 1
or 3 (channels first, as torchvision uses): uint8, or floating point in [0, 1] (rounded to 8 bits, as the rest of the
pipeline works in 8 bits). Anything else is refused with a :class:`~mimkit.errors.DataError` naming the item and the
form it has: a float tensor outside [0, 1] is most likely already normalized, which mimkit does itself
(``data.mean``/``data.std``), so it is not clipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimkit.data.decode import UNREADABLE_IMAGE_ERRORS, to_8bit
from mimkit.errors import DataError

IMAGE_FORMS = "PIL images, uint8 arrays (H, W[, C]) or tensors (C, H, W) (uint8, or float in [0, 1])"


def as_image(value: Any, where: str) -> Image.Image:
    """``value`` as an 8-bit "L" or "RGB" PIL image; ``where`` names the item in errors (``dataset[3]``)."""
    if isinstance(value, Image.Image):
        return to_8bit(value)
    if isinstance(value, torch.Tensor):
        return _tensor_image(value, where)
    if isinstance(value, np.ndarray):
        return _array_image(value, where)
    raise DataError(f"{where} is a {type(value).__name__}, not an image; give {IMAGE_FORMS}")


def _array_image(pixels: np.ndarray, where: str) -> Image.Image:
    if pixels.dtype != np.uint8:
        raise DataError(
            f"{where} is a {pixels.dtype} array; give uint8 arrays (0-255) or float tensors (C, H, W) in [0, 1]"
        )
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[2] in (3, 4)):
        raise DataError(
            f"{where} is an array of shape {tuple(pixels.shape)}; arrays are channels last: (H, W) or (H, W, C) "
            "with C 1, 3 or 4"
        )
    return to_8bit(Image.fromarray(np.ascontiguousarray(pixels)))


def _tensor_image(pixels: torch.Tensor, where: str) -> Image.Image:
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise DataError(
            f"{where} is a tensor of shape {tuple(pixels.shape)}; tensors are channels first: (C, H, W) with C 1 or 3"
        )
    pixels = pixels.detach().cpu()
    if pixels.is_floating_point():
        pixels = pixels.float()
        if not torch.isfinite(pixels).all():
            raise DataError(f"{where} holds NaN or infinite values")
        low, high = pixels.min().item(), pixels.max().item()
        if low < 0 or high > 1:
            raise DataError(
                f"{where} is a float tensor with values in [{low:.3g}, {high:.3g}], not in [0, 1]; give images "
                "before normalization (mimkit normalizes with data.mean and data.std)"
            )
        pixels = pixels.mul(255).round_().to(torch.uint8)
    elif pixels.dtype != torch.uint8:
        raise DataError(f"{where} is a {pixels.dtype} tensor; give uint8 tensors or float tensors in [0, 1]")
    return _array_image(pixels.permute(1, 2, 0).numpy(), where)


def check_first_item(load: Callable[[int], Image.Image]) -> None:
    """Read item 0 with ``load`` when a source is built, so that items of a wrong form fail at once (a
    :class:`~mimkit.errors.DataError`); a picture that merely cannot be decoded is left to the data pipeline, which
    skips and counts it as it does an unreadable file."""
    try:
        load(0)
    except UNREADABLE_IMAGE_ERRORS:
        return


def as_label(value: Any, where: str) -> int:
    """A class index: a non-negative int, NumPy integer or one-element integer tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{where} has the label {value!r}; labels are class indices: whole numbers from 0")
    return value


def class_indices(names: Sequence[str]) -> tuple[list[int], list[str] | None]:
    """Labels written as text (a file list's, a text column's): all whole numbers are class indices themselves (no
    class names); otherwise the sorted distinct names are the classes, as a folder's sub-folders are."""
    if all(name.isdigit() for name in names):
        return [int(name) for name in names], None
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return [index[name] for name in names], classes
