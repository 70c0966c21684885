"""The fast pretraining loader: same crop distribution as torchvision's, reduced JPEG decoding that keeps the
sample, the decode rules intact; and data/step times in every run's records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T

from mimkit.cli import main
from mimkit.data import AugmentedDataset, ImageFolder, pretrain_transform
from mimkit.data.crops import decode_reduction, draw_crop_box
from mimkit.data.decode import EXIF_ORIENTATION, open_image, open_image_reduced
from mimkit.data.sources import SamplePhotos
from tests.conftest import tiny_overrides
from tests.transfer_files import write_fashion_mnist_files

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


def _reference(img_size: int) -> T.Compose:
    """torchvision's pipeline as mimkit pretrained with before (PIL bicubic crop, flip, ToTensor, Normalize)."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=SCALE, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def _torchvision_box(width: int, height: int, seed: int) -> tuple[int, int, int, int]:
    torch.manual_seed(seed)
    top, left, crop_h, crop_w = T.RandomResizedCrop.get_params(torch.empty(1, 1).expand(height, width), SCALE, RATIO)
    return left, top, crop_w, crop_h


def _photo_jpeg(path, size: tuple[int, int], photo: int = 0, mode: str = "RGB") -> Image.Image:
    """A sample photo resized to ``size`` and saved as a quality-90 JPEG (returns what was saved)."""
    image = SamplePhotos().load(photo).convert(mode).resize(size, Image.Resampling.BICUBIC)
    image.save(path, quality=90)
    return image


def _gray_levels(tensor: torch.Tensor) -> torch.Tensor:
    """A normalized tensor back in 0-255 gray levels."""
    return tensor * torch.tensor(STD).view(-1, 1, 1) * 255 + torch.tensor(MEAN).view(-1, 1, 1) * 255


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1600, 1200), (40, 300), (300, 40), (28, 28)])
def test_crop_boxes_are_torchvision_boxes_for_the_same_seed(size):
    for seed in range(200):
        box = draw_crop_box(*size, SCALE, generator=torch.Generator().manual_seed(seed))
        assert tuple(box) == _torchvision_box(*size, seed)


def test_crop_distribution_matches_torchvision():
    """Independent draws (different seeds) of area share and log aspect ratio: same distribution by KS test."""
    width, height, count = 500, 375, 3000
    generator = torch.Generator().manual_seed(12345)
    ours = [draw_crop_box(width, height, SCALE, generator=generator) for _ in range(count)]
    theirs = [_torchvision_box(width, height, 10**6 + seed) for seed in range(count)]

    def area_share(boxes):
        return np.array([box[2] * box[3] / (width * height) for box in boxes])

    def log_aspect(boxes):
        return np.array([math.log(box[2] / box[3]) for box in boxes])

    def centre_x(boxes):
        return np.array([(box[0] + box[2] / 2) / width for box in boxes])

    for statistic in (area_share, log_aspect, centre_x):
        a, b = statistic(ours), statistic(theirs)
        assert abs(a.mean() - b.mean()) < 0.02
        assert stats.ks_2samp(a, b).pvalue > 0.001


def test_decode_reduction_keeps_at_least_the_output_resolution():
    assert decode_reduction(draw_crop_box(500, 375, SCALE, generator=torch.Generator().manual_seed(0)), 224) == 1
    assert decode_reduction(draw_crop_box(4000, 3000, (1.0, 1.0)), 224) == 8
    assert decode_reduction(draw_crop_box(4000, 3000, (0.2, 0.2)), 224) == 4
    for side in range(224, 3000, 7):
        reduction = decode_reduction(draw_crop_box(side, side, (1.0, 1.0)), 224)
        assert side >= reduction * 224  # the reduced crop keeps at least 224 px
        assert reduction == 8 or side < 2 * reduction * 224  # and the next reduction would not


def test_reduced_jpeg_decode_gives_the_full_decode_sample(tmp_path):
    """Same seed, same box and flip: the reduced decode + torch bicubic is within a gray level or two of the full
    decode + Pillow's bicubic (torchvision's pipeline on the same file): 0.7 on average here."""
    path = tmp_path / "big.jpg"
    _photo_jpeg(path, (1600, 1200))
    transform = pretrain_transform(224, 3, MEAN, STD)
    reduced = 0
    for seed in range(12):
        ours = transform.from_file(path, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        theirs = _reference(224)(open_image(path))
        difference = (_gray_levels(ours) - _gray_levels(theirs)).abs()
        assert difference.mean() < 1.5, seed
        box = draw_crop_box(1600, 1200, SCALE, generator=torch.Generator().manual_seed(seed))
        reduced += decode_reduction(box, 224) > 1
    assert reduced >= 6  # most of these crops were decoded at 1/2 or 1/4 size


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_small_images_and_arrays_follow_the_reference_sample(tmp_path, mode):
    """No reduction (a 500x375 JPEG at 224 px, an in-memory photo): only the resize implementation differs; a
    gray file or photo becomes RGB as the reference converts it."""
    path = tmp_path / "photo.jpg"
    _photo_jpeg(path, (500, 375), photo=4, mode=mode)
    transform = pretrain_transform(224, 3, MEAN, STD)
    photo = SamplePhotos().load(0 if mode == "RGB" else 1)
    assert photo.mode == mode
    for seed in range(6):
        torch.manual_seed(seed)
        expected_file = _reference(224)(open_image(path).convert("RGB"))
        torch.manual_seed(seed)
        expected_array = _reference(224)(photo.convert("RGB"))
        from_file = transform.from_file(path, torch.Generator().manual_seed(seed))
        from_array = transform(photo, torch.Generator().manual_seed(seed))
        assert (_gray_levels(from_file) - _gray_levels(expected_file)).abs().mean() < 0.25
        assert (_gray_levels(from_array) - _gray_levels(expected_array)).abs().mean() < 0.25


def test_oriented_cmyk_and_png_images_are_decoded_whole_by_the_decode_rules(tmp_path):
    upright = _photo_jpeg(tmp_path / "plain.jpg", (900, 600))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored rotated: shown upright after a 90-degree turn
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    upright.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    upright.save(tmp_path / "photo.png")
    for name in ("rotated.jpg", "cmyk.jpg", "photo.png"):
        sizes = []

        def eighth(width: int, height: int, seen: list = sizes) -> int:
            seen.append((width, height))
            return 8

        image, reduction = open_image_reduced(tmp_path / name, eighth)
        assert reduction == 1 and sizes == [(900, 600)] and image.size == (900, 600), name
        assert np.array_equal(np.asarray(image), np.asarray(open_image(tmp_path / name))), name
    image, reduction = open_image_reduced(tmp_path / "plain.jpg", lambda width, height: 4)
    assert reduction == 4 and image.size == (225, 150)


def test_folder_dataset_reads_files_with_the_seeded_fast_path(tmp_path):
    """Items of an image folder come from the file path, reproducibly, and equal the transform of the decoded
    image drawn with the item's seed (same box and flip as the in-memory path)."""
    for index in range(3):
        _photo_jpeg(tmp_path / f"{index}.jpg", (640, 480), photo=index)
    transform = pretrain_transform(64, 3, MEAN, STD)
    dataset = AugmentedDataset(ImageFolder(tmp_path), transform, seed=3)
    first = dataset[(1, 2)]["image"]
    assert torch.equal(first, dataset[(1, 2)]["image"])
    assert not torch.equal(first, dataset[(2, 2)]["image"])
    from mimkit.data.dataset import sample_seed

    in_memory = transform(open_image(tmp_path / "2.jpg"), torch.Generator().manual_seed(sample_seed(3, 1, 2)))
    assert (_gray_levels(first) - _gray_levels(in_memory)).abs().mean() < 1.5


@pytest.mark.parametrize("in_chans", [1, 3])
def test_uint8_items_normalized_in_the_training_process_are_the_float_items(tmp_path, in_chans):
    """What ``mimkit pretrain`` does (uint8 crops from the workers, the batch normalized on its device) gives the
    float items of the plain transform, bit for bit, for image batches and for clip batches (channels at dim 1)."""
    for index in range(3):
        _photo_jpeg(tmp_path / f"{index}.jpg", (640, 480), photo=index)
    mean, std = MEAN[:in_chans], STD[:in_chans]
    plain = AugmentedDataset(ImageFolder(tmp_path), pretrain_transform(64, in_chans, mean, std), seed=3)
    uint8 = pretrain_transform(64, in_chans, mean, std, uint8=True)
    deferred = AugmentedDataset(ImageFolder(tmp_path), uint8, seed=3)
    keys = [(1, 0), (1, 1), (2, 2)]
    pixels = torch.stack([deferred[key]["image"] for key in keys])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, in_chans, 64, 64)
    floats = torch.stack([plain[key]["image"] for key in keys])
    assert torch.equal(uint8.normalize_batch(pixels), floats)
    clips = torch.stack([pixels, pixels.flip(0)], dim=2)  # (batch, channels, frames, height, width)
    assert torch.equal(uint8.normalize_batch(clips), torch.stack([floats, floats.flip(0)], dim=2))


def _step_times(metrics_path) -> list[tuple[float, float]]:
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    return [(record["data_s"], record["step_s"]) for record in records if "loss" in record]


def test_pretrain_records_data_and_step_time(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path / "run", "train.epochs=1", "data.samples_per_epoch=16", "train.batch_size=4")
    assert main(["pretrain", *overrides]) == 0
    times = _step_times(tmp_path / "run" / "metrics.jsonl")
    assert len(times) == 4 and all(0 <= data_s <= step_s for data_s, step_s in times)
    assert "data 0." in capsys.readouterr().out


def test_finetune_records_data_and_step_time(tmp_path, capsys):
    data = write_fashion_mnist_files(tmp_path / "idx")
    output = tmp_path / "run"
    cut = ["data.train_limit=64", "data.val_limit=32", "train.max_steps=2", "train.log_every=1"]
    assert main(["finetune", "--output", str(output), f"data.train_path={data}", *cut]) == 0
    times = _step_times(output / "metrics.jsonl")
    assert len(times) == 2 and all(0 <= data_s <= step_s for data_s, step_s in times)
    assert "data 0." in capsys.readouterr().out
