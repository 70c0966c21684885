"""Data: image sources (folders, the embedded sample photos, Fashion-MNIST), augmentation and sampling."""

from mimkit.data.dataset import AugmentedDataset, collate_items
from mimkit.data.sampler import StepSampler
from mimkit.data.sources import FashionMNIST, ImageFolder, ImageSource, SamplePhotos, build_source
from mimkit.data.transforms import eval_transform, pretrain_transform

__all__ = [
    "AugmentedDataset",
    "FashionMNIST",
    "ImageFolder",
    "ImageSource",
    "SamplePhotos",
    "StepSampler",
    "build_source",
    "collate_items",
    "eval_transform",
    "pretrain_transform",
]
