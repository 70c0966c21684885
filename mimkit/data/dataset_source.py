"""A user's dataset as an image source (``data.source: python``): any map-style dataset (``len()`` and ``[index]``,
such as a ``torch.utils.data.Dataset``) whose items are images, ``(image, label)`` pairs or ``{"image": ...,
"label": ...}`` mappings (Hugging Face ``datasets`` rows). Images go through mimkit's own transforms like a folder's
files (:mod:`mimkit.data.items` lists the forms they may take).

The first item is read and checked when the source is built, so a wrong item type fails at once in the calling
process, naming the item and its form; a labelled source reads every label then as well (from the dataset's
``targets`` when it has them and no ``target_transform``, as torchvision's datasets do; otherwise by reading every
item once).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from PIL import Image

from mimkit.data.items import as_image, as_label, check_first_item
from mimkit.data.sources import ImageSource
from mimkit.engine.config_parts import PYTHON_LENGTH_FIELDS, PYTHON_SOURCE
from mimkit.errors import DataError


def dataset_length(dataset: Any, role: str) -> int:
    """``len(dataset)``, or a clear error for something that is not a map-style dataset (``role``: its argument)."""
    if not (isinstance(dataset, Sized) and hasattr(dataset, "__getitem__")):
        raise DataError(
            f"{role} is a {type(dataset).__name__}; give a map-style dataset with len() and [index] (a "
            "torch.utils.data.Dataset; an IterableDataset cannot be shuffled and resumed exactly)"
        )
    length = len(dataset)
    if length == 0:
        raise DataError(f"{role} is empty; give a dataset with at least one image")
    return length


class DatasetSource(ImageSource):
    """The items of ``dataset`` (``role`` names it in errors: ``dataset``, ``val_dataset``); ``labelled``: items
    must be ``(image, label)`` pairs and :attr:`labels` holds every label."""

    def __init__(self, dataset: Any, role: str = "dataset", labelled: bool = False) -> None:
        self.length = dataset_length(dataset, role)
        self.dataset = dataset
        self.role = role
        self.labelled = labelled
        check_first_item(self.load)
        if labelled:
            self.labels = self._read_labels()
            classes = getattr(dataset, "classes", None)
            if isinstance(classes, (list, tuple)) and len(classes) > max(self.labels):
                self.class_names = [str(name) for name in classes]

    def __len__(self) -> int:
        return self.length

    def name_of(self, index: int) -> str:
        return f"{self.role}[{index}]"

    def load(self, index: int) -> Image.Image:
        return as_image(self._parts(index)[0], self.name_of(index))

    def _parts(self, index: int) -> tuple[Any, Any]:
        """The image and label (None when unlabelled) of item ``index``."""
        item, where = self.dataset[index], self.name_of(index)
        if isinstance(item, dict):
            if "image" not in item or (self.labelled and "label" not in item):
                keys = "'image' and 'label'" if self.labelled else "'image'"
                raise DataError(f"{where} is a mapping with keys {sorted(item)}; it needs {keys}")
            return item["image"], item.get("label")
        if isinstance(item, (tuple, list)):
            if self.labelled and len(item) != 2:
                raise DataError(f"{where} is a {type(item).__name__} of {len(item)} values, not an (image, label) pair")
            if not item:
                raise DataError(f"{where} is an empty {type(item).__name__}, not an image")
            return item[0], item[1] if self.labelled else None
        if self.labelled:
            raise DataError(f"{where} is a {type(item).__name__}, not an (image, label) pair")
        return item, None

    def _read_labels(self) -> list[int]:
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and getattr(self.dataset, "target_transform", None) is None:
            if len(targets) != self.length:
                raise DataError(f"{self.role}.targets has {len(targets)} labels for {self.length} items")
            return [as_label(label, f"{self.role}.targets[{i}]") for i, label in enumerate(targets)]
        return [as_label(self._parts(i)[1], self.name_of(i)) for i in range(self.length)]


def python_dataset(
    dataset: Any, source: str, length: int | None, role: str = "dataset", labelled: bool = False
) -> DatasetSource | None:
    """``dataset`` as the source of a run whose ``data.source`` is ``source`` and whose config recorded ``length``
    items (in the field :data:`~mimkit.engine.config_parts.PYTHON_LENGTH_FIELDS` names for ``role``): None for the
    other sources. A dataset passed to a run of another source, none
    passed to a ``python`` run (its resume, say), or one of another length is refused."""
    if source != PYTHON_SOURCE:
        if dataset is not None:
            raise DataError(
                f"{role}= was given but data.source is '{source}'; set data.source={PYTHON_SOURCE} (mimkit.pretrain "
                "and the other functions of mimkit.api do)"
            )
        return None
    if dataset is None:
        raise DataError(
            f"data.source is '{PYTHON_SOURCE}' but no {role}= was given: this run reads a dataset passed in Python "
            "(pass it again to resume, e.g. mimkit.pretrain(config, dataset, resume='auto'))"
        )
    found = DatasetSource(dataset, role, labelled)
    if len(found) != length:
        field = PYTHON_LENGTH_FIELDS[role]
        raise DataError(f"{role} has {len(found)} items but the config records {length} (data.{field})")
    return found
