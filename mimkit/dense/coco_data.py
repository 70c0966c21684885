"""COCO-format instance data (an instances JSON and a folder of images) for Mask R-CNN, read through pycocotools.

Targets follow torchvision's detection models: ``boxes`` (N, 4) float xyxy in pixels, ``labels`` (N,) int64 in
1..K (0 is their background), ``masks`` (N, H, W) uint8. The JSON's category ids map to labels in sorted order:
``category_ids[label - 1]`` is the JSON id of a label, ``class_names[label - 1]`` its name.

* Crowd annotations (``iscrowd: 1``) are no training targets; COCOeval reads them from the JSON itself.
* Images without annotations stay in the dataset (empty targets of the right shapes).
* After an augmentation the boxes are the tight boxes of the transformed masks (detectron2's LSJ recipe recomputes
  them the same way), so a crop that cuts an object leaves the box of what is left; an instance whose box is
  narrower or lower than 1 px afterwards (nothing of it left) is dropped.
* The JSON is checked completely when the dataset is built, so that a bad file fails in the calling process with
  one line naming the file, the entry and the fix.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from mimkit.dense.dense_dataset import KeyedDataset, channel_fill, read_image
from mimkit.errors import DataError

MIN_BOX_SIDE = 1.0
"""Pixels: an instance whose box is narrower or lower than this is dropped from the targets."""


class LargeScaleJitter:
    """Large-scale jitter (Ghiasi et al. 2021, as ViTDet and MixMAE train Mask R-CNN): resize keeping the aspect
    ratio so the image fits ``img_size`` x ``img_size`` times a factor drawn from ``scale_range``, crop a random
    ``img_size`` square (padding with ``fill`` at a random offset where the image is smaller), then flip
    horizontally with probability 0.5 (unless ``hflip`` is off). ``fill`` is one value or one per channel in
    [0, 1]; padding with the normalization mean makes the padded area zero after normalization. Images and
    masks move together (torchvision.transforms.v2 with tv_tensors)."""

    def __init__(
        self,
        img_size: int,
        scale_range: tuple[float, float] = (0.1, 2.0),
        fill: float | Sequence[float] = 0.0,
        hflip: bool = True,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.img_size, self.scale_range, self.fill, self.hflip = img_size, tuple(scale_range), fill, hflip

    def __call__(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (C, H, W) float and ``masks`` (N, H, W) uint8, jittered alike."""
        fill = {tv_tensors.Image: channel_fill(self.fill, image.shape[0]), tv_tensors.Mask: 0}
        steps = [
            v2.ScaleJitter((self.img_size, self.img_size), self.scale_range),
            v2.RandomCrop(self.img_size, pad_if_needed=True, fill=fill),
            *([v2.RandomHorizontalFlip()] if self.hflip else []),
        ]
        image, masks = v2.Compose(steps)(tv_tensors.Image(image), tv_tensors.Mask(masks))
        return image.as_subclass(torch.Tensor), masks.as_subclass(torch.Tensor)


class CocoInstances(KeyedDataset):
    """The images listed in ``annotations_json`` (a COCO instances file), read from ``images_dir``, in image-id
    order. Items: ``image`` (``in_chans`` x H x W float in [0, 1]), ``target`` (boxes, labels, masks) and
    ``image_id``. With ``transform`` (e.g. :class:`LargeScaleJitter`) the image and masks are augmented, seeded
    per ``(epoch, index)`` key by ``seed``; without it an item is the original image (the model resizes)."""

    def __init__(
        self,
        images_dir: str | Path,
        annotations_json: str | Path,
        in_chans: int = 3,
        transform: LargeScaleJitter | None = None,
        seed: int = 0,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotations_json = Path(annotations_json)
        self.in_chans, self.transform, self.seed = in_chans, transform, seed
        if not self.images_dir.is_dir():
            raise DataError(f"image folder not found: {self.images_dir}; point the images path at the COCO images")
        self.coco = read_coco(self.annotations_json)
        categories = sorted(self.coco.cats.values(), key=lambda category: category["id"])
        self.category_ids = [category["id"] for category in categories]
        self.class_names = [str(category["name"]) for category in categories]
        self.label_of_category = {category_id: label for label, category_id in enumerate(self.category_ids, 1)}
        self.image_ids = sorted(self.coco.imgs)
        self._check_image_files()

    @property
    def num_categories(self) -> int:
        """K, the number of object classes (torchvision's ``num_classes`` is K + 1, counting the background)."""
        return len(self.category_ids)

    def category_ids_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The JSON category ids of contiguous ``labels`` (1..K), e.g. to write predictions for COCOeval."""
        return torch.tensor(self.category_ids, dtype=torch.int64, device=labels.device)[labels - 1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _check_image_files(self) -> None:
        missing = [
            info["file_name"] for info in self.coco.imgs.values() if not (self.images_dir / info["file_name"]).is_file()
        ]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) listed in {self.annotations_json} are missing from {self.images_dir} "
                f"(first: {missing[0]}); point the images path at the folder that holds them or fix the JSON"
            )

    def load_item(self, index: int) -> dict:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        image = read_image(path, self.in_chans)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise DataError(
                f"{path} is {image.shape[-1]}x{image.shape[-2]} pixels but {self.annotations_json} says "
                f"{info['width']}x{info['height']}; fix the JSON's width/height or replace the image"
            )
        annotations = [ann for ann in self.coco.imgToAnns[image_id] if not ann.get("iscrowd", 0)]
        masks = torch.zeros((len(annotations), info["height"], info["width"]), dtype=torch.uint8)
        for row, ann in enumerate(annotations):
            masks[row] = torch.from_numpy(self.coco.annToMask(ann))
        labels = torch.tensor([self.label_of_category[ann["category_id"]] for ann in annotations], dtype=torch.int64)
        if self.transform is None:
            boxes = torch.tensor([ann["bbox"] for ann in annotations], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
        else:
            image, masks = self.transform(image, masks)
            boxes = mask_boxes(masks)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(dim=1)
        target = {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep]}
        return {"image": image, "target": target, "image_id": image_id}


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """The tight xyxy box of each of ``masks`` (N, H, W), in pixel edges (a single pixel at (x, y) gives
    (x, y, x + 1, y + 1)); an empty mask gives (0, 0, 0, 0)."""
    present = masks.bool()
    rows, columns = present.any(dim=2), present.any(dim=1)
    height, width = masks.shape[-2:]
    y0 = rows.int().argmax(dim=1)
    y1 = height - rows.flip(1).int().argmax(dim=1)
    x0 = columns.int().argmax(dim=1)
    x1 = width - columns.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~rows.any(dim=1)] = 0
    return boxes


def collate_detection(items: list[dict]) -> dict:
    """A batch for torchvision's detection models: ``images`` and ``targets`` as lists (sizes may differ),
    ``image_ids`` for the evaluator."""
    return {
        "images": [item["image"] for item in items],
        "targets": [item["target"] for item in items],
        "image_ids": [item["image_id"] for item in items],
    }


def read_coco(path: Path) -> COCO:
    """The COCO instances file at ``path``, checked (see :func:`check_instances`) and indexed by pycocotools."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; point the annotations path at a COCO instances JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); repair or regenerate the annotation file") from err
    check_instances(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def check_instances(data: object, path: Path) -> None:
    """A :class:`DataError` naming ``path``, the entry and the fix unless ``data`` is a COCO instances file whose
    every annotation pycocotools can turn into a mask of a listed image and category."""

    def fail(what: str) -> DataError:
        return DataError(f"{path}: {what}; fix the annotation file (COCO instances format)")

    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in _SECTIONS):
        raise fail(f"expected an object with the lists {', '.join(repr(key) for key in _SECTIONS)}")
    categories = {_entry_id(category, "category", fail): category for category in data["categories"]}
    if len(categories) != len(data["categories"]):
        raise fail("two categories share an id")
    images = {}
    for image in data["images"]:
        image_id = _entry_id(image, "image", fail)
        if not isinstance(image.get("file_name"), str) or not all(_positive_int(image.get(k)) for k in _IMAGE_SIZE):
            raise fail(f"image {image_id} needs a 'file_name' and positive integer 'height' and 'width'")
        images[image_id] = image
    if len(images) != len(data["images"]):
        raise fail("two images share an id")
    for ann in data["annotations"]:
        ann_id = _entry_id(ann, "annotation", fail)
        if ann.get("image_id") not in images:
            raise fail(f"annotation {ann_id} refers to image_id {ann.get('image_id')!r}, which 'images' does not list")
        if ann.get("category_id") not in categories:
            raise fail(
                f"annotation {ann_id} has category_id {ann.get('category_id')!r}, which 'categories' does not list "
                "(add the category or remove the annotation)"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise fail(f"annotation {ann_id} has iscrowd {ann.get('iscrowd')!r} (0 or 1)")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox) and min(bbox[2:]) >= 0):
            raise fail(f"annotation {ann_id} needs a 'bbox' [x, y, width, height] of finite numbers")
        problem = _segmentation_problem(ann.get("segmentation"), images[ann["image_id"]])
        if problem:
            raise fail(f"annotation {ann_id}: {problem} (Mask R-CNN trains on instance masks)")


_SECTIONS = ("images", "annotations", "categories")
_IMAGE_SIZE = ("height", "width")


def _entry_id(entry: object, kind: str, fail) -> int:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool):
        raise fail(f"every {kind} needs an integer 'id' (found {str(entry)[:60]})")
    return entry["id"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _segmentation_problem(segmentation: object, image: dict) -> str:
    """What is wrong with a polygon list or RLE ``segmentation`` of ``image`` ('' when nothing)."""
    if isinstance(segmentation, list):
        polygons_ok = segmentation and all(
            isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0 and all(map(_finite, polygon))
            for polygon in segmentation
        )
        return "" if polygons_ok else "'segmentation' needs polygons of at least 3 finite (x, y) points"
    if isinstance(segmentation, dict):
        size = [image["height"], image["width"]]
        if segmentation.get("size") != size:
            return f"the RLE 'size' {segmentation.get('size')!r} is not the image's [height, width] {size}"
        counts = segmentation.get("counts")
        if isinstance(counts, str) or (isinstance(counts, list) and all(_positive_int(c) or c == 0 for c in counts)):
            return ""
        return "the RLE 'counts' must be a string or a list of non-negative integers"
    return "no 'segmentation' (a polygon list or an RLE)"


def numpy_masks_to_rle(masks: np.ndarray) -> list[dict]:
    """COCO's compressed RLE (``counts`` as text, JSON-ready) of each of ``masks`` (N, H, W) uint8."""
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in encoded]
