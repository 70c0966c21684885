"""Dense-prediction data: the COCO instances loader, the ADE20K loader and the Fashion-MNIST demo set."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mimkit.data.sampler import StepSampler
from mimkit.dense.ade_data import (
    AdeSegmentation,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    collate_segmentation_eval,
    collate_segmentation_train,
    random_crop,
)
from mimkit.dense.coco_data import CocoInstances, LargeScaleJitter, collate_detection, numpy_masks_to_rle
from mimkit.dense.demo_set import write_dense_demo
from mimkit.errors import DataError, MimkitError
from tests.conftest import needs_fashion_mnist

# A 40 x 64 scene: a bright polygon square (category 7), a bright RLE rectangle (category 3), a crowd region
# (category 3) that is no training target; and an empty 32 x 48 image.
HEIGHT, WIDTH = 40, 64
SQUARE = (4, 6, 20, 22)  # x0, y0, x1, y1 in pixel edges
RECTANGLE = (30, 10, 60, 30)


def _box_mask(box: tuple[int, int, int, int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


def _xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def write_tiny_coco(root, **changes) -> tuple:
    images_dir = root / "images"
    images_dir.mkdir()
    pixels = np.full((HEIGHT, WIDTH), 20, dtype=np.uint8)
    pixels[(_box_mask(SQUARE) | _box_mask(RECTANGLE)).astype(bool)] = 230
    Image.fromarray(pixels).convert("RGB").save(images_dir / "scene.png")
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(images_dir / "empty.png")
    x0, y0, x1, y1 = SQUARE
    data = {
        "images": [
            {"id": 5, "file_name": "scene.png", "height": HEIGHT, "width": WIDTH},
            {"id": 9, "file_name": "empty.png", "height": 32, "width": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": _xywh(SQUARE), "area": 256, "iscrowd": 0,
             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": _xywh(RECTANGLE), "area": 600, "iscrowd": 0,
             "segmentation": numpy_masks_to_rle(_box_mask(RECTANGLE)[None])[0]},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 32, 10, 8], "area": 80, "iscrowd": 1,
             "segmentation": numpy_masks_to_rle(_box_mask((0, 32, 10, 40))[None])[0]},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    data.update(changes)
    annotations = root / "instances.json"
    annotations.write_text(json.dumps(data))
    return images_dir, annotations


def test_coco_targets_exclude_crowd_keep_empty_images_and_map_categories(tmp_path):
    dataset = CocoInstances(*write_tiny_coco(tmp_path), in_chans=1)
    assert dataset.image_ids == [5, 9] and dataset.category_ids == [3, 7] and dataset.class_names == ["three", "seven"]
    scene, empty = dataset[0], dataset[1]
    assert scene["image"].shape == (1, HEIGHT, WIDTH) and scene["image_id"] == 5
    target = scene["target"]
    assert target["labels"].tolist() == [2, 1]  # the crowd region is gone
    assert dataset.category_ids_of(target["labels"]).tolist() == [7, 3]
    assert target["boxes"].tolist() == [list(map(float, SQUARE)), list(map(float, RECTANGLE))]
    # polygon and RLE both become the masks they describe
    assert np.array_equal(target["masks"][0].numpy(), _box_mask(SQUARE))
    assert np.array_equal(target["masks"][1].numpy(), _box_mask(RECTANGLE))
    assert empty["image"].shape == (1, 32, 48)
    assert empty["target"]["boxes"].shape == (0, 4) and empty["target"]["labels"].dtype == torch.int64
    assert empty["target"]["masks"].shape == (0, 32, 48) and empty["target"]["masks"].dtype == torch.uint8
    batch = collate_detection([scene, empty])
    assert batch["image_ids"] == [5, 9] and len(batch["images"]) == len(batch["targets"]) == 2


def _tight_box(mask: torch.Tensor) -> list[float]:
    rows, columns = np.flatnonzero(mask.any(dim=1)), np.flatnonzero(mask.any(dim=0))
    return [columns[0], rows[0], columns[-1] + 1, rows[-1] + 1]


def test_large_scale_jitter_moves_image_masks_and_boxes_together(tmp_path):
    fill = 0.5
    jitter = LargeScaleJitter(48, scale_range=(0.5, 2.0), fill=fill)
    dataset = CocoInstances(*write_tiny_coco(tmp_path), transform=jitter, seed=3)
    flipped = 0
    for epoch in range(12):
        item = dataset[(epoch, 0)]
        image, target = item["image"], item["target"]
        assert image.shape == (3, 48, 48)
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            assert torch.allclose(box, torch.tensor(_tight_box(mask), dtype=torch.float32), atol=1)
            inside = image[0][mask.bool()]
            assert inside.mean() > 0.6  # the masks sit on the bright objects after resize, crop and flip
        # the square stays left of the rectangle unless the image was flipped
        if len(target["labels"]) == 2:
            flipped += int(target["boxes"][0, 0] > target["boxes"][1, 0])
        assert not target["masks"][:, (image == fill).all(dim=0)].any()  # nothing in the padding
    assert 0 < flipped < 12


def test_coco_items_are_a_function_of_seed_epoch_and_index(tmp_path):
    paths = write_tiny_coco(tmp_path)
    dataset = CocoInstances(*paths, transform=LargeScaleJitter(32))
    first = dataset[(2, 0)]
    dataset[(5, 1)]
    again = CocoInstances(*paths, transform=LargeScaleJitter(32))[(2, 0)]
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["target"]["masks"], again["target"]["masks"])
    assert not torch.equal(first["image"], dataset[(3, 0)]["image"])
    assert torch.equal(dataset[0]["image"], dataset[(0, 0)]["image"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"categories": [{"id": 3, "name": "three"}]}, "category_id 7, which 'categories' does not list"),
        ({"images": [{"id": 5, "file_name": "gone.png", "height": HEIGHT, "width": WIDTH}]}, "missing from"),
        ({"annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1]}]}, "no 'segmentation'"),
        ({"images": "none"}, "expected an object with the lists"),
    ],
)
def test_coco_file_mistakes_are_one_line_errors_naming_the_file(tmp_path, change, message):
    with pytest.raises(DataError, match=message) as caught:
        CocoInstances(*write_tiny_coco(tmp_path, **change))
    assert "\n" not in str(caught.value) and str(tmp_path) in str(caught.value)


def test_coco_json_that_is_not_json_is_refused(tmp_path):
    images, annotations = write_tiny_coco(tmp_path)
    annotations.write_text("{not json")
    with pytest.raises(DataError, match="instances.json is not valid JSON"):
        CocoInstances(images, annotations)


def write_tiny_ade(root, labels: dict[str, np.ndarray], split: str = "training") -> None:
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    for name, label in labels.items():
        pixels = (label.astype(np.float64) * 20).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(root / "images" / split / f"{name}.jpg", quality=100)
        Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{name}.png")


def _blocks(height: int, width: int) -> np.ndarray:
    """Labels 0..3 in four vertical bands, a 255 patch in the corner."""
    label = np.repeat(np.arange(width) * 4 // width, height).reshape(width, height).T.copy()
    label[:4, :4] = 255
    return label


def test_ade_reduce_zero_label_and_ignore_index(tmp_path):
    write_tiny_ade(tmp_path, {"a": _blocks(30, 50)})
    raw = AdeSegmentation(tmp_path, "training", num_classes=4)[0]["label"]
    reduced = AdeSegmentation(tmp_path, "training", num_classes=3, reduce_zero_label=True)[0]["label"]
    expected = torch.from_numpy(_blocks(30, 50)).long()
    assert torch.equal(raw, expected)
    assert torch.equal(reduced[expected == 0], torch.full_like(reduced[expected == 0], 255))
    assert torch.equal(reduced[(expected > 0) & (expected < 255)], expected[(expected > 0) & (expected < 255)] - 1)
    assert (reduced[expected == 255] == 255).all()


def test_ade_out_of_range_label_and_missing_label_map_are_refused(tmp_path):
    write_tiny_ade(tmp_path, {"a": _blocks(30, 50)})
    with pytest.raises(DataError, match=r"a\.png holds the value 3, outside 0\.\.2"):
        AdeSegmentation(tmp_path, "training", num_classes=3)[0]
    with pytest.raises(DataError, match="after reduce_zero_label"):
        AdeSegmentation(tmp_path, "training", num_classes=2, reduce_zero_label=True)[0]
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "training" / "b.png")
    with pytest.raises(DataError, match=r"have no label map \(first: .*b\.png is missing\)"):
        AdeSegmentation(tmp_path, "training", num_classes=4)


def test_ade_train_pipeline_keeps_image_and_label_aligned_on_non_square_images(tmp_path):
    write_tiny_ade(tmp_path, {"wide": _blocks(24, 60), "tall": _blocks(70, 20)})
    transform = SegmentationTrainTransform(crop_size=32, photometric=False, fill=0.5)
    dataset = AdeSegmentation(tmp_path, "training", num_classes=4, transform=transform)
    padded = 0
    for epoch in range(6):
        batch = collate_segmentation_train([dataset[(epoch, 0)], dataset[(epoch, 1)]])
        assert batch["images"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 32, 32)
        labels, gray = batch["labels"], batch["images"][:, 0]
        valid = labels != 255
        agree = (gray[valid] * 255 - labels[valid] * 20).abs() < 6
        assert agree.float().mean() > 0.9  # bilinear edges aside, pixels keep their classes
        padding = (batch["images"] == 0.5).all(dim=1)
        assert (labels[padding] == 255).all()
        padded += int(padding.any())
    assert padded > 0
    assert torch.equal(dataset[(4, 1)]["image"], dataset[(4, 1)]["image"])


def test_ade_eval_keeps_the_label_at_its_original_size(tmp_path):
    write_tiny_ade(tmp_path, {"a": _blocks(30, 50)}, split="validation")
    dataset = AdeSegmentation(tmp_path, "validation", num_classes=4, transform=SegmentationEvalTransform(64))
    batch = collate_segmentation_eval([dataset[0]])
    assert batch["images"][0].shape == (3, 64, 107)  # short side to the crop, keeping 30:50
    assert batch["labels"][0].shape == (30, 50) and batch["orig_sizes"] == [(30, 50)] and batch["names"] == ["a"]


def test_cat_max_ratio_avoids_crops_dominated_by_one_class():
    label = torch.zeros(64, 128, dtype=torch.int64)
    label[:, :32] = 1  # only windows near the left edge hold two classes in similar shares
    image = torch.zeros(1, 64, 128)

    def balanced_share(cat_max_ratio: float) -> float:
        balanced = 0
        for seed in range(40):
            torch.manual_seed(seed)
            _, window = random_crop(image, label, 64, cat_max_ratio)
            counts = torch.bincount(window.flatten())
            balanced += int(counts.max() / counts.sum() < 0.75)
        return balanced / 40

    assert balanced_share(0.75) > 0.8 > 0.4 > balanced_share(1.0)


def test_ade_batches_do_not_depend_on_loader_workers(tmp_path):
    write_tiny_ade(tmp_path, {f"{i}": _blocks(24 + i, 40) for i in range(6)})
    dataset = AdeSegmentation(tmp_path, "training", num_classes=4, transform=SegmentationTrainTransform(16))

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = StepSampler(len(dataset), global_batch=2, steps_per_epoch=3, seed=1)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate_segmentation_train
        )
        return [batch["images"] for batch in loader]

    for serial, parallel in zip(batches(0), batches(2), strict=True):
        assert torch.equal(serial, parallel)


def test_demo_set_needs_fashion_mnist_and_an_empty_folder(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        write_dense_demo(tmp_path / "demo", fashion_mnist=tmp_path / "nowhere")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(MimkitError, match="not an empty folder"):
        write_dense_demo(tmp_path / "full")


@needs_fashion_mnist
def test_demo_set_is_one_scene_set_in_both_formats(tmp_path):
    demo = write_dense_demo(tmp_path / "demo", train_images=24, val_images=4, canvas=64, seed=5)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(demo.coco_train_annotations))
    assert sorted(coco.cats) == list(range(1, 11)) and len(coco.imgs) == 24
    assert any(image.shape[0] != image.shape[1] for image in (np.asarray(Image.open(p)) for p in
                                                              demo.coco_train_images.iterdir()))
    for image_id, info in coco.imgs.items():
        pixels = np.asarray(Image.open(demo.coco_train_images / info["file_name"]))
        ade_pixels = np.asarray(Image.open(demo.ade_root / "images" / "training" / info["file_name"]))
        label = np.asarray(Image.open(demo.ade_root / "annotations" / "training" / info["file_name"]))
        assert np.array_equal(pixels, ade_pixels) and pixels.shape == (info["height"], info["width"])
        union = np.zeros_like(label)
        for ann in coco.imgToAnns[image_id]:
            mask = coco.annToMask(ann).astype(bool)
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert ann["bbox"] == [columns[0], rows[0], columns[-1] + 1 - columns[0], rows[-1] + 1 - rows[0]]
            assert ann["area"] == mask.sum() and not union[mask].any()  # instances do not overlap
            union[mask] = ann["category_id"]
        assert np.array_equal(np.where(label == 255, 0, label), union)

    same = write_dense_demo(tmp_path / "same", train_images=24, val_images=4, canvas=64, seed=5)
    other = write_dense_demo(tmp_path / "other", train_images=24, val_images=4, canvas=64, seed=6)
    assert same.coco_train_annotations.read_bytes() == demo.coco_train_annotations.read_bytes()
    assert (same.coco_val_images / "000002.png").read_bytes() == (demo.coco_val_images / "000002.png").read_bytes()
    assert other.coco_train_annotations.read_bytes() != demo.coco_train_annotations.read_bytes()


@needs_fashion_mnist
def test_demo_set_reads_through_both_loaders_and_cocoeval(tmp_path):
    demo = write_dense_demo(tmp_path / "demo", train_images=4, val_images=6, canvas=64)
    val = CocoInstances(demo.coco_val_images, demo.coco_val_annotations, in_chans=3)
    assert val.class_names[0] == "t-shirt/top" and val.num_categories == 10
    predictions = []
    for index in range(len(val)):
        item = val[index]
        boxes, labels, masks = item["target"]["boxes"], item["target"]["labels"], item["target"]["masks"]
        for box, label, rle in zip(boxes.tolist(), val.category_ids_of(labels).tolist(),
                                   numpy_masks_to_rle(masks.numpy()) if len(masks) else [], strict=True):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            predictions.append({"image_id": item["image_id"], "category_id": label, "bbox": xywh,
                                "segmentation": rle, "score": 1.0})
    with contextlib.redirect_stdout(io.StringIO()):
        for kind in ("bbox", "segm"):
            evaluation = COCOeval(val.coco, val.coco.loadRes(predictions), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(1.0)  # the targets, as predictions, are perfect
    ade = AdeSegmentation(demo.ade_root, "validation", num_classes=demo.ade_num_classes)
    labels = torch.cat([ade[index]["label"].flatten() for index in range(len(ade))])
    assert labels.max() <= 255 and ((labels <= 10) | (labels == 255)).all()
