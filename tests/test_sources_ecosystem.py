"""Data the ecosystem uses, through the command line: CSV and text file lists of image paths (with optional
labels), and local Hugging Face ``datasets`` (a ``save_to_disk`` folder and an ``imagefolder`` directory), for
pretraining and for labelled transfer; and their mistakes, each one error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimkit.cli import main
from mimkit.engine.checkpoint_metadata import stored_config
from tests.conftest import tiny_overrides
from tests.transfer_files import write_labelled_images

TINY_TRANSFER = [
    "model.args.embed_dim=32",
    "model.args.depth=1",
    "model.args.num_heads=2",
    "data.num_workers=0",
    "train.batch_size=8",
    "train.max_steps=2",
]


@pytest.fixture
def images(tmp_path) -> Path:
    """``images/{train,val}/class{0,1}/NNN.png``: 16 training and 4 validation images per class, 20 px RGB."""
    write_labelled_images(tmp_path / "images")
    return tmp_path / "images"


@pytest.fixture
def hf_datasets(tmp_path, monkeypatch):
    """Hugging Face ``datasets``, its cache (an ``imagefolder``'s Arrow files) under the test's folder and its
    progress bars off while the test writes datasets (mimkit turns them off itself while it reads one)."""
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (mimkit[ecosystem])")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()
    yield datasets
    datasets.enable_progress_bars()


def _listed(images: Path, split: str) -> list[tuple[str, str]]:
    """``(path relative to images/, class name)`` of every image of ``split``."""
    return [(p.relative_to(images).as_posix(), p.parent.name) for p in sorted((images / split).rglob("*.png"))]


def _pretrain(output: Path, *args: str) -> int:
    """A tiny pretraining run on the data ``args`` name (``--data`` or ``data.*``; not the tiny runs' samples)."""
    tiny = tiny_overrides(output, "train.max_steps=2", "train.visualize_images=2")
    return main(["pretrain", *(o for o in tiny if o != "data.source=samples"), *args])


def _finetune(output: Path, *args: str) -> int:
    return main(["finetune", "--output", str(output), *TINY_TRANSFER, *args])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_csv_file_lists_pretrain_and_finetune(images, tmp_path, capsys):
    """A CSV of relative paths (and labels as class names): ``--data list.csv`` pretrains on exactly the listed
    images (not the folder's others), and a labelled pair of lists fine-tunes."""
    for split in ("train", "val"):
        rows = ["path,label,note", *(f"{path},{label},x" for path, label in _listed(images, split))]
        (images / f"{split}.csv").write_text("\n".join(rows) + "\n")
    assert _pretrain(tmp_path / "pre", "--data", str(images / "val.csv")) == 0
    assert "data:       8 images (filelist at" in capsys.readouterr().out
    data = stored_config(tmp_path / "pre" / "checkpoints" / "last.safetensors")["data"]
    assert (data["source"], data["path"]) == ("filelist", str(images / "val.csv"))

    lists = [f"data.train_path={images / 'train.csv'}", f"data.val_path={images / 'val.csv'}"]
    assert _finetune(tmp_path / "ft", "data.source=filelist", *lists) == 0
    out = capsys.readouterr().out
    assert "32 training and 8 validation images, 2 classes (filelist)" in out and "done: 2 steps" in out


def test_text_file_lists_pretrain_and_finetune(images, tmp_path, capsys):
    """Text lists: a path per line (absolute paths, a comment and a blank line) for pretraining; ``path<TAB>label``
    and ``path label`` lines with whole-number labels for fine-tuning."""
    unlabelled = ["# the validation images", "", *(str(images / path) for path, _ in _listed(images, "val"))]
    (tmp_path / "pretrain.txt").write_text("\n".join(unlabelled) + "\n")
    assert _pretrain(tmp_path / "pre", "--data", str(tmp_path / "pretrain.txt")) == 0
    assert "data:       8 images (filelist at" in capsys.readouterr().out

    train = [f"{path}\t{label[-1]}" for path, label in _listed(images, "train")]
    val = [f"{path} {label[-1]}" for path, label in _listed(images, "val")]
    (images / "train.txt").write_text("\n".join(train) + "\n")
    (images / "val.txt").write_text("\n".join(val) + "\n")
    lists = [f"data.train_path={images / 'train.txt'}", f"data.val_path={images / 'val.txt'}"]
    assert _finetune(tmp_path / "ft", "data.source=filelist", *lists) == 0
    assert "32 training and 8 validation images, 2 classes (filelist)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("list.csv", "path,label\ntrain/class0/000.png,a\nmissing.png,b\n", "list.csv line 3: image file not found"),
        ("list.csv", "file,label\ntrain/class0/000.png,a\n", "has no 'path' column (columns: file, label)"),
        ("list.csv", "path,label\ntrain/class0/000.png\n", "list.csv line 2: 1 fields where the header names 2"),
        ("list.txt", "train/class0/000.png 0\ntrain/class0/001.png\n", "list.txt line 2: no label but line 1 has one"),
        ("list.txt", "train/class0/000.png 0 extra\n", "list.txt line 1: 3 fields"),
        ("list.txt", "\n# nothing\n", "lists no images"),
        ("list.txt", "train/class0/000.png\n", "gives no labels; add a 'label' column (CSV)"),
    ],
    ids=["missing-file", "no-path-column", "short-row", "label-on-some-lines", "three-fields", "empty", "no-labels"],
)
def test_file_list_mistakes_are_one_line_naming_the_line(images, tmp_path, capsys, name, text, message):
    (images / name).write_text(text)
    lists = [f"data.train_path={images / name}", f"data.val_path={images / name}"]
    assert _finetune(tmp_path / "ft", "data.source=filelist", *lists) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "ft").exists()


def test_a_missing_file_list_is_one_line(tmp_path, capsys):
    assert _pretrain(tmp_path / "pre", "--data", str(tmp_path / "absent.csv")) == 2
    assert f"file list not found: {tmp_path / 'absent.csv'}" in _one_error_line(capsys)
    assert _pretrain(tmp_path / "pre", "data.source=filelist") == 2
    assert "data.source 'filelist' needs data.path naming a CSV or text file" in _one_error_line(capsys)


def _saved_dataset(datasets, images: Path, root: Path, splits: dict[str, str]) -> Path:
    """``save_to_disk`` of a ``DatasetDict`` (split name -> folder under ``images``): PIL images in an ``img``
    column and ``ClassLabel`` labels in ``y``."""
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["class0", "class1"])})
    tables = {}
    for split, folder in splits.items():
        listed = _listed(images, folder)
        rows = {"img": [Image.open(images / path) for path, _ in listed], "y": [int(label[-1]) for _, label in listed]}
        tables[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(tables).save_to_disk(str(root))
    return root


def test_a_save_to_disk_dataset_pretrains_and_finetunes(images, hf_datasets, tmp_path, capsys):
    saved = _saved_dataset(hf_datasets, images, tmp_path / "saved", {"train": "train", "validation": "val"})
    columns = ["data.image_column=img"]
    assert _pretrain(tmp_path / "pre", "data.source=hf_datasets", f"data.path={saved}", *columns) == 0
    assert "data:       32 images (hf_datasets at" in capsys.readouterr().out
    assert _pretrain(tmp_path / "pre-val", "data.source=hf_datasets", f"data.path={saved}", "data.split=validation",
                     *columns) == 0
    assert "data:       8 images (hf_datasets at" in capsys.readouterr().out

    args = ["data.source=hf_datasets", f"data.train_path={saved}", *columns, "data.label_column=y"]
    assert _finetune(tmp_path / "ft", *args) == 0
    assert "32 training and 8 validation images, 2 classes (hf_datasets)" in capsys.readouterr().out


def test_a_local_imagefolder_pretrains_and_finetunes(images, hf_datasets, tmp_path, capsys):
    """``datasets``' imagefolder reads images/ (train/ and val/ become its train and validation splits, the class
    folders a label column)."""
    assert _pretrain(tmp_path / "pre", "data.source=hf_datasets", f"data.path={images}") == 0
    assert "data:       32 images (hf_datasets at" in capsys.readouterr().out
    assert _finetune(tmp_path / "ft", "data.source=hf_datasets", f"data.train_path={images}") == 0
    assert "32 training and 8 validation images, 2 classes (hf_datasets)" in capsys.readouterr().out


def test_hugging_face_dataset_mistakes_are_one_line(images, hf_datasets, tmp_path, capsys):
    saved = _saved_dataset(hf_datasets, images, tmp_path / "saved", {"train": "train", "validation": "val"})
    source = ["data.source=hf_datasets", f"data.train_path={saved}"]
    assert _finetune(tmp_path / "ft", *source) == 2
    assert f"{saved} (split train) has no column 'image' (columns: img, y); set data.image_column" in _one_error_line(
        capsys
    )
    assert _finetune(tmp_path / "ft", *source, "data.image_column=img") == 2
    assert "has no column 'label' (columns: img, y); set data.label_column" in _one_error_line(capsys)
    assert _finetune(tmp_path / "ft", *source, "data.image_column=y", "data.label_column=y") == 2
    assert "(split train) row 0 is a int, not an image" in _one_error_line(capsys)
    columns = ["data.image_column=img", "data.label_column=y"]
    assert _finetune(tmp_path / "ft", *source, *columns, "data.val_split=test") == 2
    assert "has no split 'test' (splits: train, validation); set data.val_split to one of them" in _one_error_line(
        capsys
    )
    assert _pretrain(tmp_path / "pre", "data.source=hf_datasets", f"data.path={tmp_path / 'absent'}") == 2
    assert "dataset folder not found" in _one_error_line(capsys)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "pre").exists()


def test_a_single_saved_dataset_is_not_validated_on_by_mistake(images, hf_datasets, tmp_path, capsys):
    """A ``Dataset`` saved alone has no splits: it is not its own validation set unless named so (``val_path``);
    one that records its split (an ``imagefolder``'s) is not read as another split."""
    saved = _saved_dataset(hf_datasets, images, tmp_path / "saved", {"train": "train"})
    hf_datasets.load_from_disk(str(saved))["train"].save_to_disk(str(tmp_path / "alone"))
    args = ["data.source=hf_datasets", f"data.train_path={tmp_path / 'alone'}", "data.image_column=img"]
    assert _finetune(tmp_path / "ft", *args, "data.label_column=y") == 2
    assert "holds one saved Dataset, not splits; name the validation dataset with data.val_path" in _one_error_line(
        capsys
    )
    hf_datasets.load_dataset("imagefolder", data_dir=str(images))["train"].save_to_disk(str(tmp_path / "from-folder"))
    pretraining = ["data.source=hf_datasets", f"data.path={tmp_path / 'from-folder'}", "data.split=validation"]
    assert _pretrain(tmp_path / "pre", *pretraining) == 2
    assert "holds the 'train' split, not 'validation'; set data.split=train" in _one_error_line(capsys)


def test_the_python_source_is_refused_on_the_command_line(tmp_path, capsys):
    assert _pretrain(tmp_path / "pre", "data.source=python") == 2
    assert "data.source 'python' reads a dataset passed in Python" in _one_error_line(capsys)
    assert _finetune(tmp_path / "ft", "data.python_length=4") == 2
    assert "data.python_length belongs to data.source 'python'" in _one_error_line(capsys)
