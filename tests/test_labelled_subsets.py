"""``data.train_limit`` / ``val_limit`` keep every class: a seeded, class-balanced subset, not the first N files."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from mimkit.cli import main
from mimkit.eval.config import load_transfer_config
from mimkit.eval.data import labelled_sources

CLASS_SIZES = {"apple": 10, "banana": 4, "cherry": 7}  # sorted file order puts every apple first


@pytest.fixture
def class_folders(tmp_path):
    for split in ("train", "val"):
        for name, size in CLASS_SIZES.items():
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(size):
                Image.new("RGB", (8, 8), (20 * k, 0, 0)).save(tmp_path / split / name / f"{k:02d}.png")
    return tmp_path


def _overrides(folders, *extra: str) -> list[str]:
    return ["data.source=folder", f"data.train_path={folders / 'train'}", f"data.val_path={folders / 'val'}", *extra]


def _sources(folders, *extra: str):
    train, val, _ = labelled_sources(load_transfer_config("finetune", None, _overrides(folders, *extra)).data)
    return train, val


def _counts(source) -> dict[str, int]:
    return dict(Counter(source.class_names[label] for label in source.labels))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (9, {"apple": 3, "banana": 3, "cherry": 3}),
        (12, {"apple": 4, "banana": 4, "cherry": 4}),
        (15, {"apple": 6, "banana": 4, "cherry": 5}),  # banana gives all it has; one more goes to a larger class
    ],
)
def test_train_limit_keeps_every_class_in_equal_shares(class_folders, limit, expected):
    train, _ = _sources(class_folders, f"data.train_limit={limit}")
    counts = _counts(train)
    assert len(train) == limit
    assert counts["banana"] == expected["banana"]
    assert sorted(counts.values()) == sorted(expected.values())


def test_train_limit_is_seeded(class_folders):
    sources = [_sources(class_folders, "data.train_limit=9", f"data.label_seed={seed}")[0] for seed in (0, 0, 1)]
    files = [[source.name_of(i) for i in range(len(source))] for source in sources]
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_val_limit_keeps_every_class_too(class_folders):
    _, val = _sources(class_folders, "data.val_limit=6")
    assert _counts(val) == {"apple": 2, "banana": 2, "cherry": 2}


def test_a_limit_below_the_number_of_classes_is_one_error_line(class_folders, capsys):
    args = ["finetune", "--output", str(class_folders / "run"), *_overrides(class_folders, "data.train_limit=2")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.train_limit=2 is below the number of classes (3)") and err.count("\n") == 1
