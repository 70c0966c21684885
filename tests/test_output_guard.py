"""No command writes over its own input or over a mimkit checkpoint: `export`, `visualize` and `knn` refuse with one
line and leave every file as it was; `export` writes its file atomically, with the user's umask."""

from __future__ import annotations

import os
import shutil

import pytest

from mimkit.cli import main
from tests.conftest import tiny_overrides
from tests.transfer_files import pretrain_checkpoint, write_labelled_images


@pytest.fixture
def checkpoint(tmp_path):
    return pretrain_checkpoint(tmp_path / "pre", *tiny_overrides(tmp_path / "pre"))


def _refused(capsys, args: list[str], *untouched, says: str) -> None:
    """``mimkit <args>`` exits 2 with one ``error:`` line containing ``says``, and ``untouched`` keep their bytes."""
    before = [path.read_bytes() for path in untouched]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert [path.read_bytes() for path in untouched] == before


def test_export_refuses_its_own_checkpoint_and_any_other(tmp_path, capsys, checkpoint):
    export = ["export", "--checkpoint", str(checkpoint), "--output"]
    _refused(capsys, [*export, str(checkpoint)], checkpoint, says="is this command's input")
    other = shutil.copy(checkpoint, tmp_path / "other.safetensors")
    _refused(capsys, [*export, str(other)], checkpoint, other, says="is a mimkit checkpoint")
    _refused(capsys, [*export, str(tmp_path)], checkpoint, says="is a folder")


def test_export_writes_atomically_with_the_users_umask(tmp_path, checkpoint):
    output = tmp_path / "out" / "encoder.safetensors"
    output.parent.mkdir()
    output.write_bytes(b"an older export")
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(output.parent) == ["encoder.safetensors"]  # the temporary file was renamed, none is left


def test_visualize_refuses_its_images_and_checkpoints(tmp_path, capsys, checkpoint):
    write_labelled_images(tmp_path / "images")
    image = tmp_path / "images" / "val" / "class1" / "002.png"
    visualize = ["visualize", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "images" / "val")]
    _refused(capsys, [*visualize, "--output", str(image)], image, checkpoint, says="is this command's input")
    _refused(capsys, [*visualize, "--output", str(checkpoint)], image, checkpoint, says="is this command's input")
    other = shutil.copy(checkpoint, tmp_path / "other.png")
    _refused(capsys, [*visualize, "--output", str(other)], other, says="is a mimkit checkpoint")


def test_knn_result_never_replaces_the_checkpoint(tmp_path, capsys, checkpoint):
    """Refused before any feature is extracted (the run is fully specified, so it would otherwise complete)."""
    data = [*write_labelled_images(tmp_path / "images"), "data.img_size=64", "data.in_chans=3", "data.num_workers=0"]
    data += ["data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"]
    knn = ["knn", "--checkpoint", str(checkpoint), "--output", str(checkpoint), *data]
    _refused(capsys, knn, checkpoint, says="is this command's input")
