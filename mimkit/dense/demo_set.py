"""A small dense-prediction data set made of real Fashion-MNIST items, written both as COCO instances and in the
ADE20K layout, so the real loaders are what the demos and tests run on (no download: Debian's
``dataset-fashion-mnist``).

Each scene is a grayscale canvas (short side ``canvas``, long side 8 px to 0.5 x ``canvas`` longer, either
orientation, both multiples of 8) with a mild seeded background (a smooth shade plus noise) and 1-5 items, each
scaled 0.8-2.5x (times ``canvas`` / 128, so larger canvases hold larger items, not only more background) and placed
at random, later items occluding earlier ones; a few percent of the scenes hold no item. An item's instance mask is
its own pixels (brighter than :data:`ITEM_THRESHOLD`) minus what later items cover; an instance left with fewer than
:data:`MIN_INSTANCE_PIXELS` visible pixels is dropped. Training scenes draw items from Fashion-MNIST's training
split, validation scenes from its test split. Scene ``i`` of a split depends only on
(seed, split, i).

Written once, the same scenes in both formats::

    OUTPUT/coco/{train,val}/NNNNNN.png
    OUTPUT/coco/annotations/instances_{train,val}.json   categories 1..10 (Fashion-MNIST's classes), RLE masks
    OUTPUT/ade/images/{training,validation}/NNNNNN.png
    OUTPUT/ade/annotations/{training,validation}/NNNNNN.png

The ADE label maps hold 0 for the background and class + 1 (1..10) for an item's pixels, so they are read with
``num_classes=11`` and ``reduce_zero_label=False``; pixels of dropped (almost hidden) instances are 255, ignored.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mimkit.data.sources import FASHION_MNIST_CLASSES, FashionMNIST
from mimkit.dense.ade_data import IGNORE_INDEX
from mimkit.dense.coco_data import numpy_masks_to_rle
from mimkit.errors import DataError, MimkitError

ITEM_THRESHOLD = 40
"""A scaled item's pixel belongs to the item when brighter than this (Fashion-MNIST's background is 0)."""
MIN_INSTANCE_PIXELS = 20
ITEM_SIDE = 28
SCALE_RANGE = (0.8, 2.5)
REFERENCE_CANVAS = 128
"""The canvas at which items are scaled by :data:`SCALE_RANGE` alone; others scale them in proportion."""
MAX_ITEMS = 5
EMPTY_SCENE_SHARE = 0.04
ADE_NUM_CLASSES = len(FASHION_MNIST_CLASSES) + 1
# (COCO folder, ADE folder, Fashion-MNIST split) of the training and validation scenes.
SPLITS = (("train", "training", "train"), ("val", "validation", "test"))


@dataclass(frozen=True)
class DenseDemo:
    """Where :func:`write_dense_demo` wrote the set; ``ade_num_classes`` is what the ADE copy is read with."""

    root: Path
    coco_train_images: Path
    coco_train_annotations: Path
    coco_val_images: Path
    coco_val_annotations: Path
    ade_root: Path
    ade_num_classes: int = ADE_NUM_CLASSES

    def describe(self) -> str:
        """What was written and the two commands that train on it."""
        return "\n".join(
            [
                f"dense demo set written to {self.root}",
                f"detection (COCO):    mimkit detect data.train_images={self.coco_train_images} "
                f"data.train_annotations={self.coco_train_annotations} data.val_images={self.coco_val_images} "
                f"data.val_annotations={self.coco_val_annotations}",
                f"segmentation (ADE):  mimkit segment data.path={self.ade_root} "
                f"data.num_classes={self.ade_num_classes}",
            ]
        )


@dataclass
class Scene:
    """One composed image: ``pixels`` (H, W) uint8, instance ``masks`` (N, H, W) bool with their Fashion-MNIST
    ``classes`` (0..9), and the pixels of ``dropped`` instances (H, W) bool."""

    pixels: np.ndarray
    masks: np.ndarray
    classes: list[int]
    dropped: np.ndarray

    def label_map(self) -> np.ndarray:
        """The ADE-style label map: 0 background, class + 1 on instances, 255 on dropped instances."""
        label = np.zeros(self.pixels.shape, dtype=np.uint8)
        label[self.dropped] = IGNORE_INDEX
        for mask, category in zip(self.masks, self.classes, strict=True):
            label[mask] = category + 1
        return label


def write_dense_demo(
    output: str | Path,
    train_images: int = 200,
    val_images: int = 50,
    canvas: int = 128,
    seed: int = 0,
    fashion_mnist: str | Path | None = None,
) -> DenseDemo:
    """Write the demo set of this module's docstring under ``output`` (a new or empty folder) from the
    Fashion-MNIST files in ``fashion_mnist`` (Debian's folder when None)."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise MimkitError(f"{output} is not an empty folder; choose a new output folder (or delete it first)")
    if train_images < 1 or val_images < 1:
        raise MimkitError(f"the demo set needs at least one image per split, got {train_images} and {val_images}")
    if canvas < ITEM_SIDE:
        raise MimkitError(f"canvas must be at least {ITEM_SIDE} pixels (one Fashion-MNIST item), got {canvas}")
    demo = DenseDemo(
        root=output,
        coco_train_images=output / "coco" / "train",
        coco_train_annotations=output / "coco" / "annotations" / "instances_train.json",
        coco_val_images=output / "coco" / "val",
        coco_val_annotations=output / "coco" / "annotations" / "instances_val.json",
        ade_root=output / "ade",
    )
    for split_number, (coco_split, ade_split, source_split) in enumerate(SPLITS):
        items = _fashion_mnist(fashion_mnist, source_split)
        count = train_images if coco_split == "train" else val_images
        scenes = [
            compose_scene(np.random.default_rng([seed, split_number, index]), items, canvas) for index in range(count)
        ]
        _write_split(output, coco_split, ade_split, scenes)
    return demo


def _fashion_mnist(root: str | Path | None, split: str) -> FashionMNIST:
    try:
        return FashionMNIST(root, split)
    except FileNotFoundError as err:
        raise DataError(str(err)) from err


def compose_scene(rng: np.random.Generator, items: FashionMNIST, canvas: int) -> Scene:
    """One scene drawn by ``rng`` from ``items`` (see the module docstring)."""
    short = canvas // 8 * 8
    long = short + 8 * int(rng.integers(1, max(short // 16, 1) + 1))
    height, width = (short, long) if rng.random() < 0.5 else (long, short)
    pixels = _background(rng, height, width)
    count = 0 if rng.random() < EMPTY_SCENE_SHARE else int(rng.integers(1, MAX_ITEMS + 1))
    masks, classes = np.zeros((count, height, width), dtype=bool), []
    for row in range(count):
        position = int(rng.integers(len(items)))
        scale = rng.uniform(*SCALE_RANGE) * canvas / REFERENCE_CANVAS
        side = max(1, min(round(ITEM_SIDE * scale), height, width))
        item = np.asarray(items.load(position).resize((side, side), Image.Resampling.BILINEAR))
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        area = (slice(top, top + side), slice(left, left + side))
        own = item > ITEM_THRESHOLD
        pixels[area][own] = item[own]
        masks[row][area] = own
        masks[:row, area[0], area[1]] &= ~own
        classes.append(items.labels[position])
    kept = masks.sum(axis=(1, 2)) >= MIN_INSTANCE_PIXELS
    dropped = masks[~kept].any(axis=0) if count else np.zeros((height, width), dtype=bool)
    return Scene(pixels, masks[kept], [c for c, keep in zip(classes, kept, strict=True) if keep], dropped)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dark smooth shade (a 3x4 grid of levels, interpolated) with mild pixel noise."""
    coarse = Image.fromarray(rng.uniform(8, 48, size=(3, 4)).astype(np.float32), "F")
    shade = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(shade + rng.normal(0, 5, size=(height, width)), 0, 255).astype(np.uint8)


def _write_split(output: Path, coco_split: str, ade_split: str, scenes: list[Scene]) -> None:
    folders = {
        "coco": output / "coco" / coco_split,
        "ade_images": output / "ade" / "images" / ade_split,
        "ade_labels": output / "ade" / "annotations" / ade_split,
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, 1):
        name = f"{image_id:06d}.png"
        encoded = _png(scene.pixels)
        (folders["coco"] / name).write_bytes(encoded)
        (folders["ade_images"] / name).write_bytes(encoded)
        (folders["ade_labels"] / name).write_bytes(_png(scene.label_map()))
        height, width = scene.pixels.shape
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        rles = numpy_masks_to_rle(scene.masks.astype(np.uint8)) if len(scene.masks) else []
        for mask, category, rle in zip(scene.masks, scene.classes, rles, strict=True):
            annotations.append(_annotation(len(annotations) + 1, image_id, mask, category, rle))
    categories = [
        {"id": number, "name": name, "supercategory": "fashion"} for number, name in enumerate(FASHION_MNIST_CLASSES, 1)
    ]
    instances = {
        "info": {"description": "mimkit dense demo set from Fashion-MNIST items"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    annotation_folder = output / "coco" / "annotations"
    annotation_folder.mkdir(exist_ok=True)
    (annotation_folder / f"instances_{coco_split}.json").write_text(json.dumps(instances), encoding="utf-8")


def _annotation(annotation_id: int, image_id: int, mask: np.ndarray, category: int, rle: dict) -> dict:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(columns[0]), int(rows[0])
    bbox = [x0, y0, int(columns[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category + 1,
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
    }


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
