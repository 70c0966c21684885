"""Labelled data and transforms for fine-tuning, probing and kNN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import zip_longest

import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from mimkit.data.catalog import PATH_NEEDED, open_source
from mimkit.data.dataset_source import python_dataset
from mimkit.data.hf_source import validation_root
from mimkit.data.sources import FashionMNIST, ImageFolder, ImageSource
from mimkit.data.transforms import ConvertMode, eval_transform
from mimkit.data.video import ClipFolder, ClipTransform
from mimkit.errors import DataError, MimkitError
from mimkit.eval.config import AugmentSection, LabelledDataSection


class Subset(ImageSource):
    """The images of ``source`` at ``indices``, in that order, with their labels."""

    def __init__(self, source: ImageSource, indices: Sequence[int]) -> None:
        self.source = source
        self.indices = list(indices)
        self.labels = [source.labels[i] for i in self.indices] if source.labels is not None else None
        self.class_names = source.class_names
        self.root = source.root

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int):
        return self.source.load(self.indices[index])

    def name_of(self, index: int) -> str:
        return self.source.name_of(self.indices[index])


def _shuffled_classes(labels: Sequence[int], generator: torch.Generator) -> list[list[int]]:
    """For every class, in increasing label order, the indices of its images in random order."""
    by_class = torch.as_tensor(list(labels))
    classes = []
    for label in sorted(set(by_class.tolist())):
        members = (by_class == label).nonzero().flatten()
        classes.append(members[torch.randperm(len(members), generator=generator)].tolist())
    return classes


def balanced_label_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of a class-balanced share of ``labels``: ``round(fraction x class size)`` (at least one) images
    drawn at random from every class with a ``seed``-ed generator, returned in increasing order."""
    classes = _shuffled_classes(labels, torch.Generator().manual_seed(seed))
    return sorted(index for members in classes for index in members[: max(1, round(fraction * len(members)))])


def balanced_count_subset(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """Indices of ``count`` images spread evenly over the classes, in increasing order: a round-robin over the
    classes (in a ``seed``-ed order) that takes each class's images in ``seed``-ed random order. Every class gets
    ``count // classes`` images or one more, except that a class with fewer images gives all it has and the other
    classes make up the difference."""
    generator = torch.Generator().manual_seed(seed)
    classes = _shuffled_classes(labels, generator)
    rounds = zip_longest(*(classes[i] for i in torch.randperm(len(classes), generator=generator).tolist()))
    return sorted([index for round_ in rounds for index in round_ if index is not None][:count])


def class_balanced_limit(source: ImageSource, limit: int, seed: int, setting: str) -> ImageSource:
    """At most ``limit`` images of the labelled ``source``, class-balanced (:func:`balanced_count_subset`); a
    ``limit`` below the number of classes is refused, since whole classes would vanish (``setting`` names the
    option in that error)."""
    classes = len(set(source.labels))
    if limit < classes:
        raise DataError(
            f"{setting}={limit} is below the number of classes ({classes}) and would drop whole classes; "
            f"set it to at least {classes} or leave it unset"
        )
    return Subset(source, balanced_count_subset(source.labels, limit, seed)) if limit < len(source) else source


def require_labels(source: ImageSource, role: str) -> None:
    """Refuse images without labels (``role`` names them in the error: training, validation, ...)."""
    if source.labels is None:
        raise MimkitError(f"the {role} images have no labels: put them in one sub-folder per class")


def _split_sources(
    data: LabelledDataSection, dataset: object | None, val_dataset: object | None
) -> tuple[ImageSource, ImageSource]:
    """The training and validation sources as ``data.source`` names them (``python``: the datasets passed)."""
    train = python_dataset(dataset, data.source, data.python_length, "dataset", labelled=True)
    val = python_dataset(val_dataset, data.source, data.python_val_length, "val_dataset", labelled=True)
    if train is not None:
        if train.class_names is None or val.class_names is None:  # e.g. a Subset of a dataset with classes
            train.class_names = val.class_names = train.class_names or val.class_names
        return train, val
    if data.source == "fashion_mnist":
        return FashionMNIST(data.train_path, "train"), FashionMNIST(data.train_path, "test")
    if data.source in PATH_NEEDED:  # filelist, hf_datasets (whose val_path defaults to the training dataset's)
        hf = data.source == "hf_datasets"
        val_path = validation_root(data.train_path, data.val_path) if hf else data.val_path
        return tuple(
            open_source(data.source, path, split, data.image_column, data.label_column, True, setting)
            for path, split, setting in (
                (data.train_path, data.train_split, "data.train_path"),
                (val_path, data.val_split, "data.val_path"),
            )
        )
    if not (data.train_path and data.val_path):
        raise MimkitError(
            f"data.source '{data.source}' needs data.train_path and data.val_path (one sub-folder per class)"
        )
    folder = ClipFolder if data.source == "clips" else ImageFolder
    return folder(data.train_path), folder(data.val_path)


def labelled_sources(
    data: LabelledDataSection, dataset: object | None = None, val_dataset: object | None = None
) -> tuple[ImageSource, ImageSource, int]:
    """Training and validation sources and the number of classes; both must be labelled alike. ``dataset`` and
    ``val_dataset``: the ``(image, label)`` datasets of a ``data.source: python`` run."""
    train, val = _split_sources(data, dataset, val_dataset)
    for role, source in (("training", train), ("validation", val)):
        require_labels(source, role)
    if train.class_names != val.class_names:
        raise MimkitError(f"training classes {train.class_names} differ from validation classes {val.class_names}")
    if data.train_limit:
        train = class_balanced_limit(train, data.train_limit, data.label_seed, "data.train_limit")
    if data.label_fraction is not None:
        train = Subset(train, balanced_label_subset(train.labels, data.label_fraction, data.label_seed))
    if data.val_limit:
        val = class_balanced_limit(val, data.val_limit, data.label_seed, "data.val_limit")
    highest = max(max(train.labels), max(val.labels))
    num_classes = len(train.class_names) if train.class_names else highest + 1
    if highest >= num_classes:
        raise DataError(f"a label is {highest} but there are {num_classes} classes ({train.class_names})")
    return train, val, num_classes


def encoder_data_args(data: LabelledDataSection) -> dict[str, int]:
    """The encoder fields the data decides: ``img_size``, ``in_chans`` and, for clips, ``num_frames``."""
    args = {"img_size": data.img_size, "in_chans": data.in_chans}
    return {**args, "num_frames": data.num_frames} if data.source == "clips" else args


def train_transform(data: LabelledDataSection, augment: AugmentSection) -> Callable:
    """Random-resized crop (bicubic) and flip, then RandAugment and random erasing when enabled (MAE's
    fine-tuning pipeline). RandAugment runs on RGB and the result is converted to ``in_chans``. Clips get the same
    draws on every sampled frame (one crop, flip, RandAugment and erased box per clip, as VideoMAE fine-tunes)."""
    steps: list = [
        ConvertMode(3),
        T.RandomResizedCrop(data.img_size, scale=data.crop_scale, interpolation=T.InterpolationMode.BICUBIC),
        *([T.RandomHorizontalFlip()] if augment.hflip else []),
    ]
    if augment.rand_augment:
        mean = tuple(round(255 * m) for m in (data.mean * 3)[:3])
        hparams = {"translate_const": int(data.img_size * 0.45), "img_mean": mean}
        steps.append(allow_zero_bit_posterize(rand_augment_transform(augment.rand_augment, hparams)))
    steps += [ConvertMode(data.in_chans), T.ToTensor(), T.Normalize(data.mean, data.std)]
    if augment.random_erase > 0:
        steps.append(RandomErasing(augment.random_erase, mode="pixel", device="cpu"))
    if data.source == "clips":
        return ClipTransform(T.Compose(steps), data.num_frames, data.frame_stride, random_start=True)
    return T.Compose(steps)


def posterize_to_bits(image: Image.Image, bits: int, **_: object) -> Image.Image:
    """Keep ``bits`` bits per channel; 0 bits gives a black image, as the PIL versions of the papers' timm 0.3
    did (PIL 9+ refuses 0, which timm's increasing posterize produces at magnitude 10)."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


def allow_zero_bit_posterize(rand_augment: RandAugment) -> RandAugment:
    for op in rand_augment.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_to_bits
    return rand_augment


def eval_transform_for(data: LabelledDataSection) -> Callable:
    """The evaluation crop (``data.eval_crop``) for images; for clips the middle ``num_frames`` frames, each with
    its short side resized to ``img_size`` and centre-cropped (VideoMAE's test crop; one view, its 3 x 5 views are
    not implemented)."""
    if data.source == "clips":
        frame = eval_transform(data.img_size, data.in_chans, data.mean, data.std)
        return ClipTransform(frame, data.num_frames, data.frame_stride, random_start=False)
    return eval_transform(data.img_size, data.in_chans, data.mean, data.std, data.eval_crop)
