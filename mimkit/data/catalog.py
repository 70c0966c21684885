"""Image sources by their config name: the built-in ones (:func:`~mimkit.data.sources.build_source`), file lists and
local Hugging Face datasets. Clip sources, shards and datasets passed in Python are opened where they are read."""

from __future__ import annotations

from pathlib import Path

from mimkit.data.file_list import FileList
from mimkit.data.hf_source import HuggingFaceImages
from mimkit.data.sources import ImageSource, build_source
from mimkit.errors import DataError

SPLIT_SETTINGS = {"data.path": "data.split", "data.train_path": "data.train_split", "data.val_path": "data.val_split"}
"""The config field that chooses the split read from the dataset each path field names."""
PATH_NEEDED = {
    "filelist": "a CSV or text file listing image paths",
    "hf_datasets": "a Hugging Face dataset folder (save_to_disk or imagefolder)",
}


def open_source(
    kind: str,
    path: str | Path | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    labelled: bool = False,
    setting: str = "data.path",
) -> ImageSource:
    """Source ``kind`` at ``path`` (``setting``: the config field that gave it, named when it is missing);
    ``split`` and the columns are read by ``hf_datasets``; ``labelled``: the source must give labels."""
    if kind in PATH_NEEDED and not path:
        raise DataError(f"data.source '{kind}' needs {setting} naming {PATH_NEEDED[kind]}")
    if kind == "filelist":
        return FileList(path, labelled)
    if kind == "hf_datasets":
        return HuggingFaceImages(path, split, image_column, label_column, labelled, SPLIT_SETTINGS[setting])
    return build_source(kind, None if path is None else str(path), split)
