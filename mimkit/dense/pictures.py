"""Pictures written at every dense evaluation: predicted boxes and masks on a few validation images (detection), and
images beside their predicted and true label maps (segmentation). Drawn with torchvision's utilities, saved as PNG
atomically."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from mimkit.dense.seg_metrics import check_labels
from mimkit.dense.segmenter import IGNORE_INDEX
from mimkit.engine.atomic_files import atomic_write

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949
MASK_ALPHA = 0.5
MASK_THRESHOLD = 0.5
BOX_WIDTH = 2
GRID_PADDING = 2


def class_palette(num_classes: int) -> torch.Tensor:
    """``(num_classes, 3)`` uint8 colours, fixed for a class index whatever the class count: hues stepped by the
    golden ratio (neighbouring indices far apart on the colour wheel), saturated and bright, never black."""
    colours = [colorsys.hsv_to_rgb((k * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.75, 0.95) for k in range(num_classes)]
    return (torch.tensor(colours) * 255).round().to(torch.uint8).reshape(num_classes, 3)


def to_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    """A CHW float image in [0, 1] as 3-channel uint8 (a grayscale image repeated)."""
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def write_grid(tiles: Sequence[torch.Tensor], columns: int, path: Path) -> None:
    """uint8 CHW ``tiles`` zero-padded to a common size, laid out ``columns`` a row, written as a PNG atomically."""
    height = max(t.shape[-2] for t in tiles)
    width = max(t.shape[-1] for t in tiles)
    padded = [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tiles]
    grid = make_grid(torch.stack(padded), nrow=columns, padding=GRID_PADDING)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write(Path(path), buffer.getvalue())


def draw_detections(
    image: torch.Tensor, prediction: dict[str, torch.Tensor], class_names: Sequence[str], score_threshold: float
) -> torch.Tensor:
    """One image with its detections scoring at least ``score_threshold``: masks tinted in the class colour, boxes
    outlined and labelled ``"name score"``."""
    canvas = to_uint8_rgb(image)
    keep = prediction["scores"].detach().cpu() >= score_threshold
    if not bool(keep.any()):
        return canvas
    labels = prediction["labels"].detach().cpu()[keep]
    palette = class_palette(len(class_names))
    colours = [tuple(palette[label - 1].tolist()) for label in labels.tolist()]
    masks = prediction["masks"].detach().cpu()[keep, 0] > MASK_THRESHOLD
    canvas = draw_segmentation_masks(canvas, masks, alpha=MASK_ALPHA, colors=colours)
    captions = [
        f"{class_names[label - 1]} {score:.2f}"
        for label, score in zip(labels.tolist(), prediction["scores"].detach().cpu()[keep].tolist(), strict=True)
    ]
    boxes = prediction["boxes"].detach().cpu()[keep]
    return draw_bounding_boxes(canvas, boxes, labels=captions, colors=colours, width=BOX_WIDTH)


def detection_picture(
    images: Sequence[torch.Tensor],
    predictions: Sequence[dict[str, torch.Tensor]],
    class_names: Sequence[str],
    path: Path,
    score_threshold: float = 0.5,
) -> None:
    """A PNG of ``images`` (CHW floats in [0, 1], any sizes, gray or RGB) in one row with their Mask R-CNN
    ``predictions`` (torchvision's outputs, labels 1..K naming ``class_names[label - 1]``) drawn on them."""
    if not images or len(images) != len(predictions):
        raise ValueError(f"need at least one image and a prediction for each: {len(images)}, {len(predictions)}")
    tiles = [draw_detections(i, p, class_names, score_threshold) for i, p in zip(images, predictions, strict=True)]
    write_grid(tiles, columns=len(tiles), path=path)


def colour_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """An ``(H, W)`` label map as a uint8 RGB image in :func:`class_palette`'s colours, the ignore label black."""
    check_labels(labels, num_classes)
    lookup = torch.zeros(IGNORE_INDEX + 1, 3, dtype=torch.uint8)
    lookup[:num_classes] = class_palette(num_classes)
    return lookup[labels.detach().cpu().long()].permute(2, 0, 1)


def segmentation_picture(
    images: Sequence[torch.Tensor],
    predicted: Sequence[torch.Tensor],
    truth: Sequence[torch.Tensor],
    path: Path,
    num_classes: int,
) -> None:
    """A PNG with one row per image: the image (CHW floats in [0, 1]), its predicted and its true ``(H, W)`` label
    maps in :func:`class_palette`'s colours (ignored pixels black)."""
    if not len(images) or not len(images) == len(predicted) == len(truth):
        raise ValueError(
            f"need as many images, predictions and truths (at least one): {len(images)}, {len(predicted)}, {len(truth)}"
        )
    tiles = []
    for image, pred, true in zip(images, predicted, truth, strict=True):
        if not image.shape[-2:] == pred.shape == true.shape:
            raise ValueError(
                f"image {tuple(image.shape)}, prediction {tuple(pred.shape)} and truth "
                f"{tuple(true.shape)} must have the same height and width"
            )
        tiles += [to_uint8_rgb(image), colour_labels(pred, num_classes), colour_labels(true, num_classes)]
    write_grid(tiles, columns=3, path=path)
