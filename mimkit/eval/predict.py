"""``mimkit predict`` and ``mimkit evaluate``: a fine-tuned (or probed) classifier from its checkpoint on image files,
or on a labelled folder (one sub-folder per class, as fine-tuning reads them).

Images are prepared as the run evaluated its validation images (its ``data`` section: size, channels,
normalization and ``eval_crop``), in fp32 and batches of the run's ``eval_batch_size``, so ``evaluate`` on the run's
validation folder reports the run's own accuracy. Unreadable images are left out and reported; output files are
written atomically and never over the checkpoint, another checkpoint or (without ``overwrite``) any existing file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mimkit.data import ImageFiles, ImageFolder, readable_batches
from mimkit.data.sources import IMAGE_EXTENSIONS, ImageSource, image_files
from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.distributed import resolve_device
from mimkit.errors import DataError, MimkitError, NonFiniteError
from mimkit.eval.classifier_checkpoint import StoredClassifier, load_classifier
from mimkit.eval.data import eval_transform_for, require_labels
from mimkit.output_guard import check_output

DEFAULT_TOP_K = 5
"""Top-k where none is asked for (fewer for a classifier of fewer classes), as the fine-tuning runs report it."""


@dataclass
class Prediction:
    path: str
    classes: list[int]
    """The ``top_k`` most likely classes, most likely first."""
    probabilities: list[float]
    """Their softmax probabilities."""


@dataclass
class Predictions:
    output: Path
    top_k: int
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """A description of each unreadable image."""


@dataclass
class Evaluation:
    images: int
    """Images scored (unreadable ones are left out)."""
    top_k: int
    top1: float
    """Accuracy in %, as the fine-tuning runs report it."""
    top_k_accuracy: float
    per_class: dict[str, dict]
    """Per class (by name, or number where the checkpoint records no names): its ``images`` and their ``top1``
    accuracy in % (``None`` for a class without images)."""
    skipped: list[str] = field(default_factory=list)


def _top_k(requested: int | None, num_classes: int) -> int:
    if requested is None:
        return min(DEFAULT_TOP_K, num_classes)
    if not 1 <= requested <= num_classes:
        raise MimkitError(f"--top-k must be between 1 and the checkpoint's {num_classes} classes, got {requested}")
    return requested


def _check_format(output: str | Path, formats: Sequence[str]) -> None:
    if Path(output).suffix.lower() not in formats:
        raise MimkitError(f"--output {output}: write a {' or '.join(formats)} file (the name's extension decides)")


def _image_classifier(checkpoint: str | Path) -> StoredClassifier:
    stored = load_classifier(checkpoint)
    if stored.config.data.source == "clips":
        raise MimkitError(f"{checkpoint} classifies clips; `mimkit predict` and `mimkit evaluate` take images")
    return stored


@torch.no_grad()
def _logits(
    stored: StoredClassifier, source: ImageSource, batch_size: int | None
) -> tuple[list[int], torch.Tensor, list[str]]:
    """The logits ``(N, classes)`` of the readable images of ``source`` (on the CPU, float32), their indices in
    ``source``, and a description of each unreadable image."""
    if batch_size is not None and batch_size < 1:
        raise MimkitError(f"--batch-size must be at least 1, got {batch_size}")
    device = resolve_device("auto")
    model = stored.model.to(device)
    data = stored.config.data
    batches = readable_batches(
        source, eval_transform_for(data), batch_size or stored.config.train.eval_batch_size, data.num_workers
    )
    indices, logits, skipped = [], [], []
    for batch_indices, images, problems in batches:
        skipped += problems
        if images is not None:
            indices += batch_indices
            logits.append(model(images.to(device)).float().cpu())
    if not logits:
        where = f" under {source.root}" if source.root is not None else ""
        raise DataError(f"none of the {len(source)} images{where} could be read (first failure: {skipped[0]})")
    scores = torch.cat(logits)
    if not scores.isfinite().all():
        raise NonFiniteError("the classifier gave NaN or infinite scores; nothing was written")
    return indices, scores, skipped


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    output: str | Path,
    top_k: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> Predictions:
    """Classify image files (folders: every image in them) with the classifier in ``checkpoint`` and write each
    image's ``top_k`` classes (default 5, fewer for fewer classes) and their probabilities to ``output``: a
    ``.csv`` (one row per image) or ``.json`` file. Classes are named where the checkpoint records names."""
    _check_format(output, (".csv", ".json"))
    check_output(output, [checkpoint, *images], replace=overwrite)
    files = image_files(images)
    if not files:
        raise DataError(f"no image files among the given paths (extensions {' '.join(IMAGE_EXTENSIONS)})")
    stored = _image_classifier(checkpoint)
    result = Predictions(Path(output), _top_k(top_k, stored.num_classes))
    indices, logits, result.skipped = _logits(stored, ImageFiles(files), batch_size)
    ranked = logits.softmax(dim=1).topk(result.top_k, dim=1)
    for index, classes, probabilities in zip(indices, ranked.indices, ranked.values, strict=True):
        result.predictions.append(Prediction(str(files[index]), classes.tolist(), probabilities.tolist()))
    writer = _predictions_csv if result.output.suffix.lower() == ".csv" else _predictions_json
    atomic_write(result.output, writer(result, stored, str(checkpoint)).encode())
    return result


def _predictions_csv(result: Predictions, stored: StoredClassifier, checkpoint: str) -> str:
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    ranks = range(1, result.top_k + 1)
    table.writerow(["path", *(f"top{r}_{part}" for r in ranks for part in ("class", "label", "probability"))])
    for item in result.predictions:
        ranked = zip(item.classes, item.probabilities, strict=True)
        table.writerow([item.path, *(v for c, p in ranked for v in (c, stored.label(c), repr(p)))])
    return text.getvalue()


def _predictions_json(result: Predictions, stored: StoredClassifier, checkpoint: str) -> str:
    predictions = [
        {
            "path": item.path,
            "top_k": [
                {"class": c, "label": stored.label(c), "probability": p}
                for c, p in zip(item.classes, item.probabilities, strict=True)
            ],
        }
        for item in result.predictions
    ]
    document = {"checkpoint": checkpoint, "top_k": result.top_k, "predictions": predictions, "skipped": result.skipped}
    return json.dumps(document, indent=2) + "\n"


def _check_classes(source: ImageFolder, stored: StoredClassifier, checkpoint: str | Path) -> None:
    """The folder's classes must be the checkpoint's: as many, and the same names where the run's labels came from
    folder names (a run on Fashion-MNIST names its classes itself; a folder of it is read in folder order)."""
    names = source.class_names or []
    if len(names) != stored.num_classes:
        raise DataError(
            f"{source.root} has {len(names)} class sub-folders, but {checkpoint} classifies {stored.num_classes} "
            "classes; give a folder with one sub-folder per class the run was trained on"
        )
    if stored.config.data.source == "folder" and stored.class_names and names != stored.class_names:
        differ = [f"{a} (checkpoint: {b})" for a, b in zip(names, stored.class_names, strict=True) if a != b]
        raise DataError(
            f"the class sub-folders of {source.root} are not the classes {checkpoint} was trained on: "
            f"{', '.join(differ[:3])}; rename the folders to the training classes"
        )


def evaluate_folder(
    checkpoint: str | Path,
    folder: str | Path,
    output: str | Path | None = None,
    top_k: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> Evaluation:
    """Top-1 and top-k accuracy (in %) and per-class top-1 accuracy of the classifier in ``checkpoint`` on a
    labelled ``folder`` (one sub-folder per class, the classes of the run); written to ``output`` (a ``.json``
    file) when given."""
    if output is not None:
        _check_format(output, (".json",))
        check_output(output, [checkpoint], replace=overwrite)
    stored = _image_classifier(checkpoint)
    k = _top_k(top_k, stored.num_classes)
    source = ImageFolder(folder)
    require_labels(source, "evaluation")
    _check_classes(source, stored, checkpoint)
    indices, logits, skipped = _logits(stored, source, batch_size)
    labels = torch.tensor([source.labels[i] for i in indices])
    ranked = logits.topk(k, dim=1).indices
    hits = ranked[:, 0] == labels
    per_class = {}
    for label in range(stored.num_classes):
        members = labels == label
        count = int(members.sum())
        accuracy = 100 * int(hits[members].sum()) / count if count else None
        per_class[stored.label(label)] = {"images": count, "top1": accuracy}
    result = Evaluation(
        images=len(labels),
        top_k=k,
        top1=100 * int(hits.sum()) / len(labels),
        top_k_accuracy=100 * int((ranked == labels[:, None]).any(dim=1).sum()) / len(labels),
        per_class=per_class,
        skipped=skipped,
    )
    if output is not None:
        document = {
            "checkpoint": str(checkpoint),
            "data": str(folder),
            "images": result.images,
            "top_k": k,
            "top1": result.top1,
            f"top{k}": result.top_k_accuracy,
            "per_class": per_class,
            "skipped": skipped,
        }
        atomic_write(Path(output), (json.dumps(document, indent=2) + "\n").encode())
    return result
