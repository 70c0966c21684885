"""A dataset whose every sample is a pure function of (seed, epoch, index).

Seeding the augmentation per sample, instead of drawing from a worker's running RNG, makes a run
independent of the number of loader workers and processes, and lets ``--resume`` continue mid-epoch with
exactly the crops an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from mimkit.data.decode import UNREADABLE_IMAGE_ERRORS
from mimkit.data.sources import ImageSource
from mimkit.data.transforms import PretrainTransform
from mimkit.errors import DataError

log = logging.getLogger(__name__)


def seed_global_generators_for_sample(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global generators with one sample's seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """Seed torch's, Python's and NumPy's global generators for one sample (torchvision draws from torch; timm's
    RandAugment and RandomErasing from Python's ``random`` and NumPy).

    In the main process their states are restored afterwards, so drop path and the like draw as if no sample had
    been made. A loader worker's generators serve its samples alone, each seeded afresh, so there the states are
    not saved and restored: that costs 0.5 ms a sample, more than the transforms of a 28-px item (0.4 ms), and
    made a 2-core fine-tuning run wait on its loader."""
    if torch.utils.data.get_worker_info() is not None:
        seed_global_generators_for_sample(seed)
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_global_generators_for_sample(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def split_key(key: tuple[int, int] | int) -> tuple[int, int]:
    """A sample key as ``(epoch, index)``: the :class:`~mimkit.data.sampler.StepSampler`'s pairs, or a bare index
    (epoch 0)."""
    return key if isinstance(key, tuple) else (0, key)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class AugmentedDataset(torch.utils.data.Dataset):
    """Indexed by ``(epoch, index)`` pairs (see :class:`~mimkit.data.sampler.StepSampler`).

    An unreadable or truncated image is replaced by the next readable one and counted in the item's
    ``skipped`` field. Construction already reads the first readable item, so a source with no readable image
    at all fails there, in the calling process, with a :class:`~mimkit.errors.DataError` (raised inside a
    DataLoader worker, the error would come back wrapped in the worker's traceback).
    """

    def __init__(self, source: ImageSource, transform: Callable, seed: int = 0) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self[(0, 0)]  # raises now when nothing at all is readable

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = split_key(key)
        skipped, first_error = 0, ""
        for attempt in range(len(self.source)):
            position = (index + attempt) % len(self.source)
            try:
                tensor = self._transformed(position, sample_seed(self.seed, epoch, index))
            except UNREADABLE_IMAGE_ERRORS as err:
                log.warning("skipping unreadable image %s: %s", self.source.name_of(position), err)
                skipped += 1
                first_error = first_error or f"{self.source.name_of(position)}: {err}"
                continue
            label = self.source.labels[position] if self.source.labels is not None else -1
            return {"image": tensor, "label": label, "index": position, "skipped": skipped}
        where = f" under {self.source.root}" if self.source.root is not None else ""
        raise DataError(
            f"none of the {len(self.source)} images{where} could be read (first failure: {first_error or 'none'}); "
            "replace or remove the broken files, or point the data path at readable images"
        )

    def _transformed(self, position: int, seed: int) -> torch.Tensor:
        """Item ``position`` transformed with the draws of ``seed``: a :class:`PretrainTransform` draws from a
        generator of its own and reads files directly (shrunk while decoding when the crop allows); any other
        transform draws from the global generators, seeded for the sample and restored afterwards."""
        if not isinstance(self.transform, PretrainTransform):
            image = self.source.load(position)
            with seeded_randomness(seed):
                return self.transform(image)
        generator = torch.Generator().manual_seed(seed)
        path = self.source.file_of(position)
        if path is None:
            return self.transform(self.source.load(position), generator)
        return self.transform.from_file(path, generator)


def collate_items(items: list[dict]) -> dict:
    """Stack images; labels/indices become tensors; ``skipped`` is summed over the batch."""
    return {
        # default_collate stacks straight into shared memory inside a loader worker (one copy less per batch)
        "image": torch.utils.data.default_collate([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
        "skipped": sum(item["skipped"] for item in items),
    }


def load_readable(
    source: ImageSource, transform: Callable, limit: int | None = None, seed: int | None = None
) -> tuple[torch.Tensor | None, list[str]]:
    """Transform the first ``limit`` readable images of ``source`` (all when None) into one batch; with ``seed``
    the images are tried in a seeded random order (a fixed choice that is not simply the first files).

    Returns the batch (None if nothing could be read) and a description of each unreadable image skipped.
    """
    order = range(len(source))
    if seed is not None:
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    images, skipped = [], []
    for index in order:
        if limit is not None and len(images) == limit:
            break
        image, problem = transformed_or_problem(source, index, transform)
        if image is None:
            skipped.append(problem)
        else:
            images.append(image)
    return (torch.stack(images) if images else None), skipped


def transformed_or_problem(source: ImageSource, index: int, transform: Callable) -> tuple[torch.Tensor | None, str]:
    """Image ``index`` of ``source`` transformed, or ``None`` and a description of why it could not be read."""
    try:
        return transform(source.load(index)), ""
    except UNREADABLE_IMAGE_ERRORS as err:
        return None, f"{source.name_of(index)} ({err})"


class ReadableItems(torch.utils.data.Dataset):
    """Every image of ``source`` transformed, in order; an unreadable one gives its description instead."""

    def __init__(self, source: ImageSource, transform: Callable) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        return index, *transformed_or_problem(self.source, index, self.transform)


def _readable_batch(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list]:
    readable = [(index, image) for index, image, _ in items if image is not None]
    images = torch.stack([image for _, image in readable]) if readable else None
    return [index for index, _ in readable], images, [problem for _, image, problem in items if image is None]


def readable_batches(
    source: ImageSource, transform: Callable, batch_size: int, num_workers: int = 0
) -> Iterator[tuple[list[int], torch.Tensor | None, list[str]]]:
    """Every image of ``source`` in order, transformed, ``batch_size`` at a time (decoded by ``num_workers`` loader
    workers) as ``(indices, images, skipped)``: the indices of the readable images, their batch (None if none of
    them could be read) and a description of each unreadable image, which is left out."""
    loader = torch.utils.data.DataLoader(
        ReadableItems(source, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_readable_batch
    )
    yield from loader


def batch_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, sampler, num_workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """A loader of :func:`collate_items` batches in ``sampler``'s order (pinned memory when feeding a GPU).

    The loader draws its workers' base seed from a generator of its own: drawn from torch's global generator, each
    new pass over the data would shift the random stream of drop path and the like, so a run resumed mid-epoch
    (one more pass) would differ from an uninterrupted one. Samples are seeded by :class:`AugmentedDataset`."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
