"""Semantic segmentation data in the ADE20K layout, with the MAE/BEiT (mmseg) ADE20K training pipeline.

Layout: ``ROOT/images/{training,validation}/NAME.{jpg,jpeg,png}`` and ``ROOT/annotations/{training,validation}/
NAME.png``, one single-channel label map per image holding class indices. Label 255 is ignored by losses and
metrics. With ``reduce_zero_label`` (ADE20K's own files, where 0 means "other") 0 becomes 255 and every other
value drops by one, as mmseg does. A value that is still ``num_classes`` or more (other than 255) is an error
naming the file, not a silent wrong class.

Training (mmseg's ADE20K config, which MAE, BEiT, ConvMAE and MixMAE fine-tune with): resize keeping the aspect
ratio to the base scale (4 x crop, crop), i.e. (2048, 512) for a 512 crop, times a ratio drawn from 0.5-2.0;
random crop of crop x crop where no class may fill more than ``cat_max_ratio`` of it (up to 10 tries); flip with
probability 0.5; photometric distortion; pad to the crop at the bottom and right (label 255). Evaluation: the image
resized keeping the ratio to the base scale, the label at its original size (metrics are taken there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from mimkit.dense.dense_dataset import KeyedDataset, channel_fill, coin, randint, read_image, uniform
from mimkit.errors import DataError

IGNORE_INDEX = 255
SPLITS = ("training", "validation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CROP_TRIES = 10
LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")
"""Single-channel PNG modes whose values are class indices (a palette image's indices, not its colours)."""


def base_scale(crop_size: int) -> tuple[int, int]:
    """mmseg's ADE20K scale for a ``crop_size`` crop: (long edge, short edge) = (4 x crop, crop)."""
    return 4 * crop_size, crop_size


def rescaled_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """(height, width) resized keeping the ratio so that the long edge fits max(scale) and the short edge
    min(scale) (mmcv's ``rescale_size``)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def read_label_map(path: Path) -> torch.Tensor:
    """The label map at ``path`` as an (H, W) int64 tensor of the stored values (read with Pillow directly: the
    image decoding rules would turn palette indices into colours and rescale 16-bit values)."""
    try:
        with Image.open(path) as label:
            if label.mode not in LABEL_MODES:
                raise DataError(
                    f"label map {path} is a {label.mode} image; write class indices as a single-channel "
                    "(grayscale or palette) PNG"
                )
            values = np.asarray(label)
    except FileNotFoundError as err:
        raise DataError(f"label map not found: {path}; restore it (every image needs one)") from err
    except OSError as err:
        raise DataError(f"cannot read label map {path} ({err}); replace the file") from err
    return torch.from_numpy(values.astype(np.int64))


def checked_labels(raw: torch.Tensor, num_classes: int, reduce_zero_label: bool, path: Path) -> torch.Tensor:
    """``raw`` label values as training labels: reduced when ``reduce_zero_label`` (0 -> 255, v -> v - 1, 255
    stays), then refused with a :class:`DataError` naming ``path`` if any is ``num_classes`` or more but not 255."""
    labels = raw.clone()
    if reduce_zero_label:
        labels[raw == 0] = IGNORE_INDEX
        labels[(raw != 0) & (raw != IGNORE_INDEX)] -= 1
    wrong = ((labels >= num_classes) & (labels != IGNORE_INDEX)) | (labels < 0)
    if wrong.any():
        value = int(raw[wrong][0])
        reduced = ", after reduce_zero_label" if reduce_zero_label else ""
        raise DataError(
            f"label map {path} holds the value {value}, outside 0..{num_classes - 1}{reduced} and not the ignore index "
            f"{IGNORE_INDEX}; set data.num_classes (and data.reduce_zero_label) to match the files, or fix the file"
        )
    return labels


def random_crop(
    image: torch.Tensor, label: torch.Tensor, size: int, cat_max_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` window (smaller where the image is) of ``image`` (C, H, W) and ``label``
    (H, W); with ``cat_max_ratio`` < 1 a window where one class (ignore index aside) covers that share or more
    is drawn again, up to 10 times, and one with a single class always is (mmseg's ``RandomCrop``)."""
    height, width = label.shape

    def draw() -> tuple[int, int]:
        return randint(0, max(height - size, 0)), randint(0, max(width - size, 0))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(CROP_TRIES):
            window = label[top : top + size, left : left + size]
            counts = torch.bincount(window[window != IGNORE_INDEX].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return image[:, top : top + size, left : left + size], label[top : top + size, left : left + size]


def photometric_distortion(
    image: torch.Tensor,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a (C, H, W) image in [0, 1], each step with probability 0.5:
    brightness +- ``brightness_delta``/255, contrast (a factor, before or after the colour steps, chosen at random),
    and for RGB images saturation (torchvision's blend with the gray image: mmseg scales HSV saturation) and hue
    (+- ``hue_delta`` in OpenCV's 0-180 hue scale). Grayscale images get brightness and contrast only."""
    if coin():
        image = (image + uniform(-brightness_delta, brightness_delta) / 255).clamp(0, 1)
    contrast_first = coin()
    if contrast_first and coin():
        image = (image * uniform(*contrast_range)).clamp(0, 1)
    if image.shape[0] == 3:
        if coin():
            image = F.adjust_saturation(image, uniform(*saturation_range)).clamp(0, 1)
        if coin():
            image = F.adjust_hue(image, randint(-hue_delta, hue_delta) / 180)
    if not contrast_first and coin():
        image = (image * uniform(*contrast_range)).clamp(0, 1)
    return image


class SegmentationTrainTransform:
    """The training pipeline of the module docstring; ``fill`` (one value or one per channel, in [0, 1]) pads
    the image (the normalization mean makes the padding zero after normalization, as mmseg pads after it)."""

    def __init__(
        self,
        crop_size: int = 512,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: bool = True,
        photometric: bool = True,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}")
        self.crop_size, self.ratio_range, self.cat_max_ratio = crop_size, tuple(ratio_range), cat_max_ratio
        self.hflip, self.photometric, self.fill = hflip, photometric, fill

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = uniform(*self.ratio_range)
        long_edge, short_edge = base_scale(self.crop_size)
        size = list(rescaled_size(*label.shape, (int(long_edge * ratio), int(short_edge * ratio))))
        image = F.resize(image, size, antialias=True).clamp(0, 1)
        label = F.resize_mask(label, size)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio)
        if self.hflip and coin():
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        padding = [0, 0, self.crop_size - label.shape[-1], self.crop_size - label.shape[-2]]
        image = F.pad(image, padding, fill=channel_fill(self.fill, image.shape[0]))
        return image, F.pad_mask(label, padding, fill=IGNORE_INDEX)


class SegmentationEvalTransform:
    """The image resized keeping its ratio to :func:`base_scale` of ``crop_size``; the label left as it is."""

    def __init__(self, crop_size: int = 512) -> None:
        self.scale = base_scale(crop_size)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = list(rescaled_size(*image.shape[-2:], self.scale))
        return F.resize(image, size, antialias=True).clamp(0, 1), label


class AdeSegmentation(KeyedDataset):
    """The images of ``split`` ('training' or 'validation') under ``root`` with their label maps, in file-name
    order. Items: ``image`` (``in_chans`` x H x W float in [0, 1]), ``label`` (H, W) int64 with 255 ignored,
    ``orig_size`` (the label file's (H, W)) and ``name``. ``transform`` (:class:`SegmentationTrainTransform`,
    :class:`SegmentationEvalTransform` or None for the files as they are) is seeded per ``(epoch, index)`` key."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_classes: int,
        reduce_zero_label: bool = False,
        in_chans: int = 3,
        transform: SegmentationTrainTransform | SegmentationEvalTransform | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 1 <= num_classes < IGNORE_INDEX:
            raise DataError(
                f"num_classes must be 1..{IGNORE_INDEX - 1} ({IGNORE_INDEX} is the ignore index), got {num_classes}; "
                "set data.num_classes to the number of classes"
            )
        self.root = Path(root)
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label
        self.in_chans, self.transform, self.seed = in_chans, transform, seed
        images_dir, labels_dir = self.root / "images" / split, self.root / "annotations" / split
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DataError(
                    f"{folder} not found; data.path must hold images/{{training,validation}} and "
                    "annotations/{training,validation} (the ADE20K layout)"
                )
        self.image_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.image_paths:
            raise DataError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {images_dir}; put the {split} images there")
        self.label_paths = [labels_dir / f"{path.stem}.png" for path in self.image_paths]
        missing = [path for path in self.label_paths if not path.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) in {images_dir} have no label map (first: {missing[0]} is missing); "
                "add the annotation PNGs or remove those images"
            )

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_item(self, index: int) -> dict:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image = read_image(image_path, self.in_chans)
        label = checked_labels(read_label_map(label_path), self.num_classes, self.reduce_zero_label, label_path)
        if image.shape[-2:] != label.shape:
            raise DataError(
                f"{image_path} is {image.shape[-1]}x{image.shape[-2]} pixels but its label map {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}; fix or replace one of them"
            )
        orig_size = tuple(label.shape)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "orig_size": orig_size, "name": image_path.stem}


def collate_segmentation_train(items: list[dict]) -> dict:
    """Training batch: ``images`` (B, C, crop, crop) and ``labels`` (B, crop, crop) stacked."""
    return {
        "images": torch.stack([item["image"] for item in items]),
        "labels": torch.stack([item["label"] for item in items]),
    }


def collate_segmentation_eval(items: list[dict]) -> dict:
    """Evaluation batch: lists of ``images``, ``labels`` (original size), ``orig_sizes`` and ``names`` (images
    differ in size)."""
    return {key + "s": [item[key] for item in items] for key in ("image", "label", "orig_size", "name")}
