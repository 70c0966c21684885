"""Image transforms: MAE's pretraining augmentation and a deterministic resize for evaluation/visualization."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from mimkit.data.crops import CropBox, decode_reduction, draw_crop_box
from mimkit.data.decode import open_image_reduced, to_8bit


class ConvertMode:
    """Convert a PIL image of any mode to 8-bit grayscale (``in_chans=1``) or RGB (``in_chans=3``) by the rules of
    :mod:`mimkit.data.decode`; picklable for workers."""

    def __init__(self, in_chans: int) -> None:
        modes = {1: "L", 3: "RGB"}
        if in_chans not in modes:
            raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        self.mode = modes[in_chans]

    def __call__(self, image: Image.Image) -> Image.Image:
        image = to_8bit(image)
        return image if image.mode == self.mode else image.convert(self.mode)


class PretrainTransform:
    """MAE's pretraining augmentation: random-resized crop (area share in ``crop_scale``, aspect 3/4-4/3, bicubic),
    horizontal flip (unless ``hflip`` is off), normalize; a ``(in_chans, img_size, img_size)`` float tensor.

    The crop box and the flip are drawn first (:func:`~mimkit.data.crops.draw_crop_box`, then a flip draw: the
    draws, order and distribution of torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``), from
    ``generator`` or torch's global generator. From a file (:meth:`from_file`) the box is drawn on the size the
    header gives and the JPEG decoded at the reduction :func:`~mimkit.data.crops.decode_reduction` allows; the box
    is mapped exactly (fractional pixels) onto the reduced image. The crop is resized with the antialiased bicubic
    kernel of Pillow's resize (see :meth:`_resized_crop`) and normalized with constants computed once. Picklable
    for workers.

    With ``uint8`` the transform stops before normalizing and returns the uint8 crop: a loader worker then hands a
    quarter of the bytes to the training process (and the host a quarter to the GPU), which normalizes the batch
    with :meth:`normalize_batch` on its device, with the same arithmetic and so the same values.
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        uint8: bool = False,
    ) -> None:
        self.convert = ConvertMode(in_chans)
        self.uint8 = uint8
        self.img_size = img_size
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        std_tensor = torch.tensor(std, dtype=torch.float32)
        self.gain = 1 / (255 * std_tensor)
        self.offset = -torch.tensor(mean, dtype=torch.float32) / std_tensor

    def normalize_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``pixels`` with channels at dim 1 (a batch of images ``(B, C, H, W)`` or clips ``(B, C, T, H,
        W)``) as normalized float32, on their device."""
        shape = (1, -1, *([1] * (pixels.dim() - 2)))
        gain, offset = self.gain.to(pixels.device).view(shape), self.offset.to(pixels.device).view(shape)
        return pixels.float().mul_(gain).add_(offset)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = to_8bit(image)
        return self._finish(image, draw_crop_box(*image.size, self.crop_scale, generator=generator), 1, generator)

    def from_file(self, path: str | Path, generator: torch.Generator | None = None) -> torch.Tensor:
        """The transform of the image file at ``path`` (decoded by :mod:`mimkit.data.decode`'s rules)."""
        boxes = []

        def reduction_for_crop(width: int, height: int) -> int:
            boxes.append(draw_crop_box(width, height, self.crop_scale, generator=generator))
            return decode_reduction(boxes[0], self.img_size)

        image, reduction = open_image_reduced(path, reduction_for_crop)
        return self._finish(image, boxes[0], reduction, generator)

    def _finish(self, image: Image.Image, box: CropBox, reduction: int, generator: torch.Generator | None):
        """``image``: 8-bit "L" or "RGB". Gray turns RGB by copying its channel, after the crop (the same pixels
        as converting first, for less work); RGB turns gray by Pillow's luma before it."""
        flip = self.hflip and torch.rand(1, generator=generator).item() < 0.5
        if image.mode == "RGB" and self.convert.mode == "L":
            image = self.convert(image)
        resized = self._resized_crop(image, box, reduction, channels=len(self.convert.mode))
        if flip:
            resized = resized.flip(-1)
        resized = resized.contiguous()
        return resized if self.uint8 else self.normalize_batch(resized[None])[0]

    def _resized_crop(self, image: Image.Image, box: CropBox, reduction: int, channels: int) -> torch.Tensor:
        """The crop ``box`` (full-size pixels) of ``image`` (decoded at 1/``reduction`` size), bicubic-resized to
        ``img_size``: uint8, ``(channels, H, W)`` (a gray image's channel repeated). A whole-pixel box is resized
        by torch on uint8 pixels (about 2.5x faster than Pillow, within 0.02 gray levels of it on average); a box
        that falls between the pixels of a reduced image by Pillow, which resizes from fractional boxes (rounding
        the box to whole pixels would shift the crop by up to half a reduced pixel)."""
        edges = (box.left, box.top, box.left + box.width, box.top + box.height)
        size = (self.img_size, self.img_size)
        if reduction > 1:
            scaled = tuple(edge / reduction for edge in edges)
            pixels = np.array(image.resize(size, Image.Resampling.BICUBIC, box=scaled))
            resized = torch.from_numpy(pixels.reshape(*size, -1)).permute(2, 0, 1)
        else:
            pixels = np.array(image.crop(edges))
            crop = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)
            # channels last (a permuted height x width x channels array): torch's fast uint8 kernel
            resized = F.interpolate(crop[None], size=size, mode="bicubic", antialias=True)[0]
        return resized.expand(channels, -1, -1)


pretrain_transform = PretrainTransform  # the name callers knew when it returned a torchvision Compose


def eval_transform(
    img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float], crop: float = 1.0
) -> T.Compose:
    """Resize the short side to ``img_size / crop`` and center-crop ``img_size``, then normalize. ``crop`` is the
    share of the resized side kept: 1 keeps the whole (square) image, MAE's evaluation keeps 0.875 (224 of 256)."""
    return T.Compose(
        [
            ConvertMode(in_chans),
            T.Resize(round(img_size / crop), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
