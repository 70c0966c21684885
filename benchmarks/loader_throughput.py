"""Images/s of mimkit's pretraining loader against torchvision's ImageFolder pipeline, on the same JPEG files.

mimkit: ``AugmentedDataset(ImageFolder) + pretrain_transform`` through ``batch_loader`` and a ``StepSampler``, as
``mimkit pretrain`` with ``data.source=folder`` reads (224 px, crop scale 0.2-1, flip, ImageNet normalization).
torchvision: ``datasets.ImageFolder`` + ``RandomResizedCrop(224, scale=(0.2, 1), interpolation=BICUBIC)`` (bicubic,
as mimkit and MAE crop; torchvision's default would be bilinear) + ``RandomHorizontalFlip`` + ``ToTensor`` +
``Normalize`` through a shuffling ``DataLoader``. Same batch size, same worker count.

The files are photos at ImageNet-like size (500x375 or 375x500, JPEG quality 90), cut and resized from
scikit-image's sample photos into a temporary folder with class sub-folders (or ``--folder``). Both pipelines
alternate over ``--rounds`` passes in this one process; a pass is timed from its first batch to its last (the
workers' start-up and first batch are left out) and the median pass is reported.

    python benchmarks/loader_throughput.py --workers 0 1 2 --images 384 --batch 32
    python benchmarks/loader_throughput.py --workers 4 --json   # last line: one JSON record
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMG_SIZE, CROP_SCALE = 224, (0.2, 1.0)
PHOTO_SIZE, JPEG_QUALITY, CLASSES = (500, 375), 90, 4


def write_photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs (quality 90, 500x375 landscape or 375x500 portrait) under ``root/class_k/``: random
    4:3 windows (60-100% of the short side) of scikit-image's sample photos, resized with Lanczos."""
    from mimkit.data import SamplePhotos

    photos = SamplePhotos()
    rng = np.random.default_rng(seed)
    for number in range(count):
        photo = photos.load(number % len(photos))
        portrait = bool(rng.integers(2))
        size = PHOTO_SIZE[::-1] if portrait else PHOTO_SIZE
        short = min(photo.size) * rng.uniform(0.6, 1.0)
        window = (short * 3 / 4, short) if portrait else (short, short * 3 / 4)
        window = (min(window[0], photo.width), min(window[1], photo.height))
        left = rng.uniform(0, photo.width - window[0])
        top = rng.uniform(0, photo.height - window[1])
        box = (left, top, left + window[0], top + window[1])
        picture = photo.resize(size, Image.Resampling.LANCZOS, box=box)
        folder = root / f"class_{number % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        picture.save(folder / f"photo_{number:05d}.jpg", quality=JPEG_QUALITY)
    return root


Pipeline = tuple[torch.utils.data.DataLoader, Callable[[torch.Tensor], torch.Tensor]]
"""A loader and what the training process does to each batch of it before the model sees it."""


def mimkit_loader(root: Path, batch: int, workers: int, images: int) -> Pipeline:
    """As ``mimkit pretrain`` reads a folder: uint8 crops from the workers, normalized in the training process
    (here on the CPU; on the GPU in training), which is part of the time measured."""
    from mimkit.data import AugmentedDataset, ImageFolder, StepSampler, batch_loader, pretrain_transform
    from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD

    transform = pretrain_transform(IMG_SIZE, 3, IMAGENET_MEAN, IMAGENET_STD, CROP_SCALE, hflip=True, uint8=True)
    dataset = AugmentedDataset(ImageFolder(root), transform)
    sampler = StepSampler(len(dataset), batch, images // batch)
    return batch_loader(dataset, batch, sampler, workers, torch.device("cpu")), transform.normalize_batch


def torchvision_loader(root: Path, batch: int, workers: int, images: int) -> Pipeline:
    from torchvision import datasets
    from torchvision import transforms as T

    from mimkit.model_configs.parts import IMAGENET_MEAN, IMAGENET_STD

    transform = T.Compose(
        [
            T.RandomResizedCrop(IMG_SIZE, scale=CROP_SCALE, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=images // batch * batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    return loader, lambda images: images


PIPELINES = {"mimkit": mimkit_loader, "torchvision": torchvision_loader}


def images_per_second(pipeline: Pipeline) -> float:
    """Images/s of one pass, from the first batch's arrival to the last's."""
    loader, finish = pipeline
    batches = iter(loader)
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        images = finish(batch["image"] if isinstance(batch, dict) else batch[0])
        count += len(images)
    return count / (time.perf_counter() - start)


def measure(root: Path, workers: int, images: int, batch: int, rounds: int, only: str | None) -> dict:
    names = [only] if only else list(PIPELINES)
    loaders = {name: PIPELINES[name](root, batch, workers, images) for name in names}
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            speeds[name].append(images_per_second(loaders[name]))
    record = {"workers": workers, "images": images, "batch": batch, "rounds": rounds, "img_size": IMG_SIZE}
    for name in names:
        record[f"{name}_images_per_s"] = statistics.median(speeds[name])
    if not only:
        record["ratio"] = record["mimkit_images_per_s"] / record["torchvision_images_per_s"]
    per_worker = max(workers, 1)
    record.update({f"{name}_images_per_s_per_worker": record[f"{name}_images_per_s"] / per_worker for name in names})
    return record


def pass_images(asked: int | None, batch: int, workers: int) -> int:
    """Images per timed pass: as asked, else enough that each worker makes 8 batches (at least 384 images)."""
    return asked or max(384, 8 * batch * max(workers, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="loader worker counts (0: in-process)")
    parser.add_argument(
        "--images", type=int, help="images per timed pass (default: 384, or 8 batches per worker if more)"
    )
    parser.add_argument("--files", type=int, default=256, help="JPEG files to make (passes cycle through them)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating passes of each pipeline")
    parser.add_argument("--folder", type=Path, help="folder of JPEGs to read (made here when missing or empty)")
    parser.add_argument("--only", choices=sorted(PIPELINES), help="time one pipeline (for whole-process timers)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the last worker count")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader worker, as DataLoader workers run
    with tempfile.TemporaryDirectory() as scratch:
        root = args.folder or Path(scratch)
        if not any(root.rglob("*.jpg")):
            write_photo_folder(root, args.files)
        records = [
            measure(root, workers, pass_images(args.images, args.batch, workers), args.batch, args.rounds, args.only)
            for workers in args.workers
        ]
    load = os.getloadavg()[0]
    print(f"{IMG_SIZE} px, batch {args.batch}, load average {load:.2f}")
    print(f"{'workers':>7}  {'images':>6}  {'mimkit img/s':>12}  {'torchvision img/s':>17}  {'ratio':>5}")
    for record in records:
        cells = [f"{record.get(f'{name}_images_per_s', float('nan')):.1f}" for name in PIPELINES]
        ratio = record.get("ratio", float("nan"))
        print(f"{record['workers']:>7}  {record['images']:>6}  {cells[0]:>12}  {cells[1]:>17}  {ratio:>5.2f}")
    if args.json:
        print(json.dumps({**records[-1], "load_average": load}))


if __name__ == "__main__":
    main()
