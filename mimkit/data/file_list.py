"""Images listed in a file (``data.source: filelist``), with optional labels.

* CSV (``.csv``): a header line naming the columns, one of them ``path`` and optionally ``label``; other columns
  are ignored.
* Any other file is text: one image per line, the path alone or followed by a tab or spaces and a label (a path
  that holds spaces needs the tab). Blank lines and lines starting with ``#`` are skipped. Either every line has a
  label or none has.

Relative paths are read from the list file's folder. Labels that are all whole numbers are class indices; other
labels are class names, numbered in sorted order (as a folder's class sub-folders are). The whole list is read
and checked when the source is built: a malformed line, a missing label or an image file that does not exist fails
at once, naming the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mimkit.data.items import class_indices
from mimkit.data.sources import ImageFiles
from mimkit.errors import DataError

CSV_SUFFIX = ".csv"


@dataclass(frozen=True)
class ListedImage:
    line: int
    path: str
    label: str | None


def _csv_entries(path: Path, text: str) -> Iterator[ListedImage]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if "path" not in columns:
        raise DataError(
            f"{path}: the header (line 1) has no 'path' column (columns: {', '.join(columns) or 'none'}); a CSV file "
            "list starts with a header line such as path,label"
        )
    try:
        for row in reader:
            if None in row or None in row.values():
                found = len(columns) + len(row[None]) if None in row else sum(v is not None for v in row.values())
                raise DataError(f"{path} line {reader.line_num}: {found} fields where the header names {len(columns)}")
            yield ListedImage(reader.line_num, row["path"].strip(), row["label"].strip() if "label" in row else None)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not readable as CSV ({err})") from err


def _text_entries(path: Path, text: str) -> Iterator[ListedImage]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split("\t")] if "\t" in line else line.split()
        if len(fields) > 2:
            raise DataError(
                f"{path} line {number}: {len(fields)} fields; write 'path' or 'path<TAB>label' (a path with spaces "
                "needs the tab before its label)"
            )
        yield ListedImage(number, fields[0], fields[1] if len(fields) == 2 else None)


def read_file_list(path: str | Path) -> list[ListedImage]:
    """The entries of a CSV or text file list, each checked: a path, and a label on every line or on none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file list not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; data.source filelist reads a CSV or text file (use folder for folders)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text; a file list is a CSV or text file of image paths") from err
    reader = _csv_entries if path.suffix.lower() == CSV_SUFFIX else _text_entries
    entries = list(reader(path, text))
    if not entries:
        raise DataError(f"{path} lists no images")
    labelled = entries[0].label is not None
    for entry in entries:
        if not entry.path:
            raise DataError(f"{path} line {entry.line}: no image path")
        if entry.label == "":
            raise DataError(f"{path} line {entry.line}: an empty label")
        if (entry.label is not None) != labelled:
            first = f"line {entries[0].line} has {'one' if labelled else 'none'}"
            found = "no label" if labelled else "a label"
            raise DataError(f"{path} line {entry.line}: {found} but {first}; give every image a label or none")
    return entries


class FileList(ImageFiles):
    """The images a file list names (see the module docstring); ``labelled``: the list must give labels."""

    def __init__(self, path: str | Path, labelled: bool = False) -> None:
        entries = read_file_list(path)
        folder = Path(path).parent
        paths = [folder / entry.path for entry in entries]
        for entry, image in zip(entries, paths, strict=True):
            if not image.is_file():
                raise DataError(f"{path} line {entry.line}: image file not found: {image}")
        super().__init__(paths)
        if entries[0].label is not None:
            self.labels, self.class_names = class_indices([entry.label for entry in entries])
        elif labelled:
            raise DataError(
                f"{path} gives no labels; add a 'label' column (CSV) or write 'path<TAB>label' lines for labelled runs"
            )
