"""What the detection and segmentation datasets share: samples keyed and seeded like
:class:`~mimkit.data.dataset.AugmentedDataset` (every sample a pure function of (seed, epoch, index), so a run is
independent of loader workers and processes and resumes exactly), image reading, and the random draws of the
augmentations (all from torch's generator, which the per-sample seeding fixes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from mimkit.data.dataset import sample_seed, seeded_randomness, split_key
from mimkit.data.decode import UNREADABLE_IMAGE_ERRORS, open_image
from mimkit.data.transforms import ConvertMode
from mimkit.errors import DataError


class KeyedDataset(torch.utils.data.Dataset):
    """Indexed by ``(epoch, index)`` pairs (a bare int is epoch 0); subclasses implement :meth:`load_item`, which
    runs with torch's, Python's and NumPy's generators seeded for that sample."""

    seed: int = 0

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = split_key(key)
        with seeded_randomness(sample_seed(self.seed, epoch, index)):
            return self.load_item(index)

    def load_item(self, index: int) -> dict:
        raise NotImplementedError


def read_image(path: Path, in_chans: int) -> torch.Tensor:
    """The image file at ``path`` as a CHW float tensor in [0, 1] with ``in_chans`` channels (decoded by
    :func:`~mimkit.data.decode.open_image`); an unreadable file is a :class:`DataError` naming it."""
    try:
        image = ConvertMode(in_chans)(open_image(path))
    except FileNotFoundError as err:
        raise DataError(f"image file not found: {path}; restore it or remove it from the dataset") from err
    except UNREADABLE_IMAGE_ERRORS as err:
        raise DataError(f"cannot read image {path} ({err}); replace the file or remove it from the dataset") from err
    return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)


def channel_fill(fill: float | Sequence[float], channels: int) -> list[float]:
    """``fill`` (one value, or one per channel, in [0, 1]) as one value per channel of a ``channels``-channel
    image: the value padding takes, e.g. the normalization mean so that padding normalizes to zero."""
    values = [float(fill)] if isinstance(fill, (int, float)) else [float(value) for value in fill]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(0.0 <= value <= 1.0 for value in values):
        raise ValueError(f"fill must be one value or {channels} values in [0, 1], got {fill}")
    return values


def padding_fill(mean: Sequence[float]) -> list[float]:
    """The pixel value padding takes: the normalization mean (zero after normalization, as the recipes pad after
    normalizing), limited to [0, 1] for :func:`channel_fill`."""
    return [min(max(float(value), 0.0), 1.0) for value in mean]


def uniform(low: float, high: float) -> float:
    """A float drawn uniformly from [low, high) by torch's generator."""
    return low + (high - low) * torch.rand(()).item()


def randint(low: int, high: int) -> int:
    """An int drawn uniformly from [low, high] (inclusive) by torch's generator."""
    return int(torch.randint(low, high + 1, ()).item())


def coin(probability: float = 0.5) -> bool:
    """True with ``probability``, drawn by torch's generator."""
    return torch.rand(()).item() < probability
