"""Data sources, the unreadable-image policy, seeded augmentation and step sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mimkit.cli import main
from mimkit.data import (
    AugmentedDataset,
    ImageFolder,
    SamplePhotos,
    StepSampler,
    collate_items,
    pretrain_transform,
)
from mimkit.data.sources import FASHION_MNIST_DIR, FashionMNIST, build_source
from mimkit.errors import DataError
from mimkit.eval.config import LabelledDataSection
from mimkit.eval.data import eval_transform_for
from tests.conftest import tiny_overrides
from tests.image_files import png_header

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _write_png(path, size=(40, 30), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_with_class_subfolders_has_labels(tmp_path):
    _write_png(tmp_path / "cats" / "a.png")
    _write_png(tmp_path / "dogs" / "deep" / "b.jpg")
    folder = ImageFolder(tmp_path)
    assert folder.class_names == ["cats", "dogs"]
    assert folder.labels == [0, 1]


def test_flat_folder_needs_no_labels(tmp_path):
    _write_png(tmp_path / "a.png")
    _write_png(tmp_path / "b.png")
    folder = ImageFolder(tmp_path)
    assert folder.labels is None and len(folder) == 2


def test_empty_or_missing_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(DataError, match="needs data.path"):
        build_source("folder")


def test_unreadable_and_truncated_images_are_skipped_and_counted(tmp_path):
    _write_png(tmp_path / "good.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image")
    _write_png(tmp_path / "whole.png", size=(64, 64))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "whole.png").unlink()
    dataset = AugmentedDataset(ImageFolder(tmp_path), pretrain_transform(32, 3, MEAN, STD))
    items = [dataset[(0, i)] for i in range(len(dataset))]
    batch = collate_items(items)
    assert batch["image"].shape == (3, 3, 32, 32)
    # sorted: garbage.jpg, good.png, truncated.png; a bad one is replaced by the next readable image
    assert [item["skipped"] for item in items] == [1, 0, 2]
    assert batch["skipped"] == 3
    names = [dataset.source.paths[i].name for i in batch["index"].tolist()]
    assert set(names) == {"good.png"}


def test_no_readable_image_at_all_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=f"none of the 1 images under {tmp_path} could be read"):
        AugmentedDataset(ImageFolder(tmp_path), pretrain_transform(32, 3, MEAN, STD))


def _images_then(folder, *bad_names: str) -> None:
    """Three readable images in ``folder`` plus a decompression bomb under each of ``bad_names``."""
    for k in range(3):
        _write_png(folder / f"good{k}.png", size=(48, 40), color=(60 * k, 100, 200))
    for name in bad_names:
        (folder / name).write_bytes(png_header(100_000, 100_000))


def _pretrain(tmp_path, data, *extra: str) -> int:
    overrides = tiny_overrides(tmp_path / "run", "data.source=folder", "train.epochs=1", "data.samples_per_epoch=8")
    return main(["pretrain", "--data", str(data), *overrides, "train.batch_size=4", *extra])


def test_pretraining_skips_and_counts_a_decompression_bomb(tmp_path, capsys):
    _images_then(tmp_path / "images", "a_bomb.png")
    assert _pretrain(tmp_path, tmp_path / "images") == 0
    out = capsys.readouterr().out
    assert "warning: skipped" in out
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


def test_visualize_skips_a_decompression_bomb_and_draws_the_rest(tmp_path, capsys):
    assert main(["pretrain", *tiny_overrides(tmp_path / "run", "train.max_steps=1", "train.visualize_images=0")]) == 0
    _images_then(tmp_path / "images", "a_bomb.png")
    (tmp_path / "images" / "good1.png").unlink()
    (tmp_path / "images" / "good2.png").unlink()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.safetensors"
    grid = tmp_path / "grid.png"
    capsys.readouterr()
    args = ["visualize", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "images"), "--output", str(grid)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "a_bomb.png" in out and "exceeds limit" in out
    assert grid.is_file() and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _corrupt_images(folder) -> None:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    _write_png(folder / "b.png", size=(64, 64))
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])
    (folder / "c.png").write_bytes(png_header(100_000, 100_000))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder.mkdir(), "no images found under"),
        (lambda folder: (folder.mkdir(), (folder / "notes.txt").write_text("hello")), "no images found under"),
        (_corrupt_images, "none of the 3 images under"),
    ],
    ids=["empty", "no-images", "all-corrupt"],
)
@pytest.mark.parametrize("workers", [0, 1])
def test_pretraining_on_unusable_data_is_one_error_line(tmp_path, capsys, make, message, workers):
    make(tmp_path / "data")
    assert _pretrain(tmp_path, tmp_path / "data", f"data.num_workers={workers}") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err and str(tmp_path / "data") in err


def test_pretraining_on_a_file_instead_of_a_folder_is_one_error_line(tmp_path, capsys):
    _write_png(tmp_path / "one.png")
    assert _pretrain(tmp_path, tmp_path / "one.png") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is a file" in err


def test_augmentation_is_a_function_of_seed_epoch_index():
    dataset = AugmentedDataset(SamplePhotos(), pretrain_transform(32, 3, MEAN, STD), seed=5)
    assert torch.equal(dataset[(1, 3)]["image"], dataset[(1, 3)]["image"])
    assert not torch.equal(dataset[(1, 3)]["image"], dataset[(2, 3)]["image"])


def test_grayscale_transform_gives_one_channel():
    dataset = AugmentedDataset(SamplePhotos(), pretrain_transform(32, 1, [0.5], [0.25]))
    assert dataset[(0, 0)]["image"].shape == (1, 32, 32)


def test_two_processes_see_exactly_what_one_process_sees():
    single = list(StepSampler(50, global_batch=8, steps_per_epoch=6, seed=1))
    ranks = [list(StepSampler(50, 8, 6, rank=r, world_size=2, seed=1)) for r in range(2)]
    merged = [item for step in range(6) for r in range(2) for item in ranks[r][step * 4 : step * 4 + 4]]
    assert merged == single
    assert len({index for _, index in single}) == 48


def test_sampler_resumes_mid_epoch_and_repeats_small_datasets():
    sampler = StepSampler(5, global_batch=4, steps_per_epoch=3, seed=0)
    sampler.set_position(epoch=2)
    whole = list(sampler)
    sampler.set_position(epoch=2, start_step=1)
    assert list(sampler) == whole[4:]
    assert len(whole) == 12 and {i for _, i in whole} == set(range(5))


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_reads_idx_files():
    test = FashionMNIST(split="test")
    assert len(test) == 10_000
    image = test.load(0)
    assert image.size == (28, 28) and image.mode == "L"
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_a_sample_is_the_same_whatever_the_global_random_state():
    """Per-sample seeding covers torch, Python's random and NumPy (timm's RandAugment uses the latter two)."""
    import random

    import numpy as np
    import torch

    from mimkit.data import AugmentedDataset
    from mimkit.data.sources import ArraySource

    def transform(_image):
        return torch.tensor([torch.rand(()).item(), random.random(), float(np.random.rand())])

    dataset = AugmentedDataset(ArraySource([np.zeros((4, 4), dtype=np.uint8)] * 3), transform, seed=5)
    first = dataset[(2, 1)]["image"]
    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    assert torch.equal(dataset[(2, 1)]["image"], first)
    assert not torch.equal(dataset[(2, 0)]["image"], first)
    assert random.random() == random.Random(123).random()  # the caller's generator state is left as it was


def test_loader_workers_draw_the_samples_of_the_main_process():
    """Workers seed each sample without restoring their generators afterwards; the samples stay the same."""
    import random

    import numpy as np
    import torch

    from mimkit.data import AugmentedDataset, batch_loader
    from mimkit.data.sampler import StepSampler
    from mimkit.data.sources import ArraySource

    def transform(_image):
        return torch.tensor([torch.rand(()).item(), random.random(), float(np.random.rand())])

    dataset = AugmentedDataset(ArraySource([np.zeros((4, 4), dtype=np.uint8)] * 6), transform, seed=5)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = StepSampler(len(dataset), global_batch=2, steps_per_epoch=3, seed=1)
        return [batch["image"] for batch in batch_loader(dataset, 2, sampler, workers, torch.device("cpu"))]

    serial = batches(0)
    assert len(serial) == 3 and len({tuple(row.tolist()) for batch in serial for row in batch}) == 6
    for in_main, in_workers in zip(serial, batches(2), strict=True):
        assert torch.equal(in_main, in_workers)


def test_evaluation_crop_keeps_the_share_it_names():
    """``data.eval_crop`` 1 scores the whole image (a 28-px item keeps its border); MAE's 0.875 cuts the border."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[0, :] = 255
    image = Image.fromarray(pixels)
    whole = eval_transform_for(LabelledDataSection(img_size=28, mean=[0.0], std=[1.0], eval_crop=1.0))(image)
    assert torch.equal(whole, T.ToTensor()(image))
    cropped = eval_transform_for(LabelledDataSection(img_size=28, mean=[0.0], std=[1.0]))(image)
    assert cropped.shape == whole.shape and cropped[0, 0].max() < 0.5
