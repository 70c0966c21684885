"""A local Hugging Face ``datasets`` dataset as an image source (``data.source: hf_datasets``).

The folder is either one written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` of splits; Arrow files
read memory-mapped) or a directory of images that ``datasets.load_dataset("imagefolder", data_dir=...)`` reads (class
sub-folders become a ``label`` column; ``train/``, ``val/``... folders become splits; its cache goes where
``datasets`` keeps caches, ``HF_DATASETS_CACHE``). ``datasets`` is an optional extra (``pip install
'mimkit[ecosystem]'``), imported only here.

Images come from ``image_column`` (``datasets.Image`` features decode to PIL images; arrays and tensors are read by
:mod:`mimkit.data.items`), labels from ``label_column`` (``ClassLabel`` names become the class names; integers are
class indices; text labels are class names). The columns, the split and the first image are checked when the source
is built.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from mimkit.data.items import as_image, as_label, check_first_item, class_indices
from mimkit.data.sources import ImageSource, existing_folder
from mimkit.errors import DataError, MimkitError

SAVED_SPLITS, SAVED_DATASET = "dataset_dict.json", "state.json"
"""What ``save_to_disk`` writes at the top of its folder: a ``DatasetDict``'s index, or a single ``Dataset``'s
state."""


def validation_root(train_root: str | None, val_root: str | None) -> str | None:
    """The dataset folder a labelled run validates on: ``val_root``, else the training folder's other split, which a
    single saved ``Dataset`` does not have (validating on the training images is refused)."""
    if val_root or not train_root:
        return val_root or train_root
    if (Path(train_root) / SAVED_DATASET).is_file():
        raise DataError(
            f"{train_root} holds one saved Dataset, not splits; name the validation dataset with data.val_path"
        )
    return train_root


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise MimkitError(
            "data.source hf_datasets needs Hugging Face datasets; install it with pip install 'mimkit[ecosystem]'"
        ) from err
    return datasets


@contextmanager
def _quiet(datasets: Any):
    """Without ``datasets``' progress bars while a dataset is opened (restored after)."""
    was_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def open_split(root: str | Path, split: str, setting: str = "data.split") -> Any:
    """Split ``split`` (chosen by the config field ``setting``) of the dataset at ``root`` (a ``save_to_disk``
    folder or an ``imagefolder`` directory). A saved single ``Dataset`` is its own one split: a ``split`` other than
    the one it records is refused, so a training split is never validated on by mistake."""
    datasets = import_datasets()
    root = existing_folder(root, "dataset")
    with _quiet(datasets):
        if any((root / name).is_file() for name in (SAVED_SPLITS, SAVED_DATASET)):
            loaded = datasets.load_from_disk(str(root))
        else:
            try:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(root))
            except (FileNotFoundError, ValueError) as err:
                raise DataError(
                    f"{root} is neither a save_to_disk folder nor an image folder datasets can read ({err})"
                ) from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            splits = ", ".join(loaded)
            raise DataError(f"{root} has no split '{split}' (splits: {splits}); set {setting} to one of them")
        return loaded[split]
    if loaded.split is not None and str(loaded.split) != split:
        raise DataError(f"{root} holds the '{loaded.split}' split, not '{split}'; set {setting}={loaded.split}")
    return loaded


class HuggingFaceImages(ImageSource):
    """The images (and, with ``labelled``, the labels) of split ``split`` of the local dataset at ``root``
    (``split_setting``: the config field that chose the split, named in errors)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_column: str = "image",
        label_column: str = "label",
        labelled: bool = False,
        split_setting: str = "data.split",
    ) -> None:
        table = open_split(root, split, split_setting)
        self.where = f"{root} (split {split})"
        self.root = Path(root)
        for column, setting in ((image_column, "image_column"), *([(label_column, "label_column")] * labelled)):
            if column not in table.column_names:
                raise DataError(
                    f"{self.where} has no column '{column}' (columns: {', '.join(table.column_names)}); set "
                    f"data.{setting}"
                )
        self.images = table.select_columns([image_column])
        self.image_column = image_column
        if len(self.images) == 0:
            raise DataError(f"{self.where} holds no rows")
        check_first_item(self.load)
        if labelled:
            self.labels, self.class_names = self._labels(table, label_column)

    def _labels(self, table: Any, column: str) -> tuple[list[int], list[str] | None]:
        values = list(table[column])
        names = getattr(table.features[column], "names", None)
        if all(isinstance(value, str) for value in values):
            return class_indices(values)
        labels = [as_label(value, f"{self.where} row {row} ({column})") for row, value in enumerate(values)]
        return labels, list(names) if names else None

    def __len__(self) -> int:
        return len(self.images)

    def name_of(self, index: int) -> str:
        return f"{self.where} row {index}"

    def load(self, index: int) -> Image.Image:
        return as_image(self.images[index][self.image_column], self.name_of(index))
