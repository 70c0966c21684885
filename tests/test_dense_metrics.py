"""Dense evaluation: the segmentation confusion matrix against hand-computed numbers, COCO AP against pycocotools
called directly, and the evaluation pictures."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mimkit.dense.coco_eval import coco_results, evaluate_coco, gather_across_processes
from mimkit.dense.pictures import class_palette, detection_picture, segmentation_picture
from mimkit.dense.seg_metrics import ConfusionMatrix

# Labelled pixels (t, p): (0,0) x2, (0,1), (1,1) x3, (1,2), (2,2) x2, (2,0); the two 255 pixels count nowhere (one
# is predicted as class 3, which stays absent).
LABEL = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255], [1, 1, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 3], [1, 2, 2, 0]])
HAND_MATRIX = [[2, 1, 0, 0], [0, 3, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
NAMES = ["wall", "floor", "sky", "lamp"]


def test_confusion_matrix_and_summary_equal_the_hand_computed_ones():
    matrix = ConfusionMatrix(4)
    matrix.add(PRED[:1], LABEL[:1])
    matrix.add(PRED[1:], LABEL[1:])
    assert matrix.matrix.tolist() == HAND_MATRIX
    summary = matrix.summary(NAMES)
    # IoU = TP / (row + column - TP): 2/4, 3/5, 2/4; Acc = TP / row: 2/3, 3/4, 2/3; lamp absent from both -> null.
    assert summary["IoU"] == {"wall": 50.0, "floor": pytest.approx(60.0), "sky": 50.0, "lamp": None}
    assert summary["Acc"] == {
        "wall": pytest.approx(200 / 3),
        "floor": 75.0,
        "sky": pytest.approx(200 / 3),
        "lamp": None,
    }
    assert summary["mIoU"] == pytest.approx(100 * (0.5 + 0.6 + 0.5) / 3)
    assert summary["mAcc"] == pytest.approx(100 * (2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert summary["aAcc"] == pytest.approx(70.0)
    json.dumps(summary, allow_nan=False)


def test_a_class_predicted_but_absent_from_the_truth_has_zero_iou_and_no_accuracy():
    matrix = ConfusionMatrix(4)
    matrix.add(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]))
    summary = matrix.summary(NAMES)
    assert summary["IoU"] == {"wall": 50.0, "floor": None, "sky": None, "lamp": 0.0}
    assert summary["Acc"] == {"wall": 50.0, "floor": None, "sky": None, "lamp": None}
    assert (summary["mIoU"], summary["mAcc"], summary["aAcc"]) == (25.0, 50.0, 50.0)


def test_nothing_labelled_gives_null_metrics_not_nan():
    matrix = ConfusionMatrix(2)
    matrix.add(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255))
    summary = matrix.summary(["a", "b"])
    assert (summary["mIoU"], summary["mAcc"], summary["aAcc"]) == (None, None, None)


@pytest.mark.parametrize(
    ("pred", "label", "message"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 4]), "labels must be in 0..3 or 255, found 4"),
        (torch.tensor([0, -1]), torch.tensor([0, 1]), "predictions must be in 0..3 or 255, found -1"),
        (torch.tensor([0, 1]), torch.tensor([[0, 1]]), "shape"),
    ],
)
def test_labels_or_predictions_outside_the_classes_are_refused(pred, label, message):
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(4).add(pred, label)
    with pytest.raises(ValueError, match="distinct class names"):
        ConfusionMatrix(4).summary(["a", "a", "b", "c"])


def _merge_in_two_processes(rank: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        part = ConfusionMatrix(4)
        part.add(PRED[rank::2], LABEL[rank::2])
        queue.put((rank, part.merged().matrix.tolist(), part.matrix.tolist(), gather_across_processes([rank, "x"])))
    finally:
        dist.destroy_process_group()


def test_matrices_and_results_from_two_processes_are_summed_and_gathered(tmp_path):
    queue = mp.get_context("spawn").Queue()
    mp.spawn(_merge_in_two_processes, args=(str(tmp_path / "init"), queue), nprocs=2)
    outcomes = sorted(queue.get(timeout=60) for _ in range(2))
    assert [outcome[0] for outcome in outcomes] == [0, 1]
    for _, merged, own, gathered in outcomes:
        assert merged == HAND_MATRIX
        assert own != HAND_MATRIX
        assert gathered == [0, "x", 1, "x"]


def _rectangle(top: int, left: int, height: int, width: int) -> list[float]:
    bottom, right = top + height, left + width
    return [left, top, right, top, right, bottom, left, bottom]


def _annotation(ann_id, image_id, category_id, top, left, height, width, crowd=0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [left, top, width, height],
        "segmentation": [_rectangle(top, left, height, width)],
        "area": height * width,
        "iscrowd": crowd,
    }


@pytest.fixture
def coco_gt() -> COCO:
    """Three images (the third empty), two categories with non-contiguous ids, a crowd region on image 2."""
    coco = COCO()
    coco.dataset = {
        "images": [
            {"id": 1, "height": 40, "width": 50, "file_name": "1.png"},
            {"id": 2, "height": 30, "width": 30, "file_name": "2.png"},
            {"id": 3, "height": 20, "width": 20, "file_name": "3.png"},
        ],
        "categories": [{"id": 3, "name": "shirt"}, {"id": 7, "name": "bag"}],
        "annotations": [
            _annotation(1, 1, 3, 5, 5, 10, 20),
            _annotation(2, 1, 7, 20, 30, 15, 10),
            _annotation(3, 2, 3, 2, 2, 10, 10),
            _annotation(4, 2, 3, 15, 15, 12, 12, crowd=1),
        ],
    }
    coco.createIndex()
    return coco


CATEGORY_IDS = [3, 7]


def _prediction(boxes: list[list[float]], labels: list[int], scores: list[float], masks: list[np.ndarray]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores),
        "masks": torch.from_numpy(np.stack(masks)).float()[:, None] if masks else torch.zeros(0, 1, 1, 1),
    }


def _box_mask(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.full((height, width), 0.1, dtype=np.float32)
    mask[y1:y2, x1:x2] = 0.9
    return mask


def _perfect_predictions(coco: COCO, image_ids: list[int]) -> list[dict]:
    predictions = []
    for image_id in image_ids:
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        labels = [CATEGORY_IDS.index(a["category_id"]) + 1 for a in anns]
        predictions.append(_prediction(boxes, labels, [1.0] * len(anns), [coco.annToMask(a) for a in anns]))
    return predictions


def _direct_cocoeval(coco: COCO, results: list[dict], iou_type: str, image_ids: list[int]) -> list[float | None]:
    """The official evaluator called as its README shows, on the results' box or mask fields."""
    field = "bbox" if iou_type == "bbox" else "segmentation"
    loaded = coco.loadRes(
        [{k: copy.deepcopy(r[k]) for k in ("image_id", "category_id", "score", field)} for r in results]
    )
    evaluator = COCOeval(coco, loaded, iou_type)
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [None if s < 0 else 100 * s for s in evaluator.stats[:6]]


def test_coco_results_convert_torchvision_outputs_to_coco_dicts():
    masks = [_box_mask(20, 30, 2, 3, 12, 8)]
    prediction = _prediction([[2.0, 3.0, 12.0, 8.0]], [2], [0.75], masks)
    (result,) = coco_results([prediction], [9], CATEGORY_IDS)
    assert prediction["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0]]  # the caller's outputs are left as they were
    assert (result["image_id"], result["category_id"], result["score"]) == (9, 7, 0.75)
    assert result["bbox"] == [2.0, 3.0, 10.0, 5.0]
    assert isinstance(result["segmentation"]["counts"], str)
    decoded = mask_utils.decode({**result["segmentation"], "counts": result["segmentation"]["counts"].encode()})
    assert decoded.shape == (20, 30) and decoded.sum() == 50 and decoded[3:8, 2:12].all()
    json.dumps(result)
    assert coco_results([_prediction([], [], [], [])], [1], CATEGORY_IDS) == []


def test_evaluate_coco_equals_pycocotools_on_fixed_predictions(coco_gt, capsys):
    predictions = [
        _prediction(  # image 1: shirt found loosely, bag found with a low score and a wrong-class duplicate
            [[6, 5, 26, 16], [30, 20, 40, 35], [29, 21, 40, 34]],
            [1, 2, 1],
            [0.9, 0.4, 0.6],
            [_box_mask(40, 50, 6, 5, 26, 16), _box_mask(40, 50, 30, 20, 40, 35), _box_mask(40, 50, 29, 21, 40, 34)],
        ),
        _prediction(  # image 2: the shirt, and a detection inside the crowd region (ignored, not a false positive)
            [[2, 2, 12, 12], [16, 16, 26, 26]], [1, 1], [0.8, 0.95], [_box_mask(30, 30, 2, 2, 12, 12)] * 2
        ),
        _prediction([[1, 1, 8, 8]], [2], [0.3], [_box_mask(20, 20, 1, 1, 8, 8)]),  # image 3: a false positive
    ]
    results = coco_results(predictions, [1, 2, 3], CATEGORY_IDS)
    capsys.readouterr()
    evaluation = evaluate_coco(coco_gt, results)
    assert capsys.readouterr().out == ""
    assert "Average Precision" in evaluation.log
    for iou_type in ("bbox", "segm"):
        expected = _direct_cocoeval(coco_gt, results, iou_type, [1, 2, 3])
        names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        assert [evaluation.metrics[f"{iou_type}_{n}"] for n in names] == pytest.approx(expected)
    assert 0 < evaluation.metrics["bbox_AP"] < 100 and evaluation.metrics["bbox_APl"] is None
    json.dumps(evaluation.metrics, allow_nan=False)


def test_perfect_predictions_score_100_and_none_score_0_over_the_evaluated_images(coco_gt):
    perfect = coco_results(_perfect_predictions(coco_gt, [1, 2, 3]), [1, 2, 3], CATEGORY_IDS)
    metrics = evaluate_coco(coco_gt, perfect).metrics
    assert [metrics[k] for k in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75")] == pytest.approx([100] * 4)
    only_first = coco_results(_perfect_predictions(coco_gt, [1]), [1], CATEGORY_IDS)
    assert evaluate_coco(coco_gt, only_first, image_ids=[1, 3]).metrics["segm_AP"] == pytest.approx(100)
    assert evaluate_coco(coco_gt, only_first).metrics["segm_AP"] < 99
    empty = evaluate_coco(coco_gt, []).metrics
    assert (empty["bbox_AP"], empty["segm_AP"], empty["segm_APs"], empty["segm_APl"]) == (0.0, 0.0, 0.0, None)


def test_results_for_images_outside_the_ground_truth_are_refused(coco_gt):
    results = coco_results(_perfect_predictions(coco_gt, [1]), [42], CATEGORY_IDS)
    with pytest.raises(ValueError, match="image ids \\[42\\]"):
        evaluate_coco(coco_gt, results)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_detection_picture_draws_confident_masks_in_their_class_colour(tmp_path):
    gray = torch.zeros(1, 40, 60)
    mask = torch.zeros(1, 40, 60)
    mask[0, 20:30, 25:45] = 0.9
    faint = torch.zeros(1, 40, 60)
    faint[0, 2:8, 50:58] = 0.9
    prediction = {
        "boxes": torch.tensor([[10.0, 10.0, 55.0, 38.0], [48.0, 1.0, 59.0, 9.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.9, 0.3]),
        "masks": torch.stack([mask, faint]),
    }
    colour = class_palette(3)[1].numpy().astype(int)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    path = tmp_path / "eval" / "detections.png"
    detection_picture([gray, torch.rand(3, 30, 30)], [prediction, empty], ["shirt", "bag", "shoe"], path)
    picture = _png(path)
    assert picture.shape == (40 + 2 * 2, 2 * 60 + 3 * 2, 3)
    assert np.abs(picture[2 + 25, 2 + 35] - colour * 0.5).max() <= 1  # half-tinted in the class colour
    assert (picture[2 + 5, 2 + 54] == 0).all()  # the detection under the score threshold is not drawn
    assert not list(tmp_path.glob("eval/.*.tmp"))


def test_segmentation_picture_puts_each_image_beside_its_coloured_prediction_and_truth(tmp_path):
    palette = class_palette(4).numpy().astype(int)
    first = (torch.rand(3, 8, 12), torch.full((8, 12), 2), torch.full((8, 12), 1))
    first[2][0, 0] = 255
    second = (torch.rand(1, 6, 6), torch.zeros(6, 6, dtype=torch.long), torch.full((6, 6), 3))
    path = tmp_path / "segmentation.png"
    segmentation_picture(*zip(first, second, strict=True), path=path, num_classes=4)
    picture = _png(path)
    assert picture.shape == (2 * 8 + 3 * 2, 3 * 12 + 4 * 2, 3)
    tile = lambda row, column: picture[2 + row * 10 :, 2 + column * 14 :]  # noqa: E731 (tile origin)
    assert (tile(0, 1)[3, 3] == palette[2]).all() and (tile(0, 2)[3, 3] == palette[1]).all()
    assert (tile(0, 2)[0, 0] == 0).all()  # ignored pixel: black
    assert (tile(1, 1)[1, 1] == palette[0]).all() and (tile(1, 2)[1, 1] == palette[3]).all()
    assert len({tuple(c) for c in class_palette(150).tolist()}) == 150
    with pytest.raises(ValueError, match="labels must be in 0..3 or 255, found 7"):
        segmentation_picture([first[0]], [first[1]], [torch.full((8, 12), 7)], path=path, num_classes=4)
