"""Data: image sources (folders, file lists, local Hugging Face datasets, datasets passed in Python, the embedded
sample photos, Fashion-MNIST), augmentation and sampling."""

from mimkit.data.dataset import AugmentedDataset, batch_loader, collate_items, load_readable, readable_batches
from mimkit.data.sampler import StepSampler
from mimkit.data.sources import FashionMNIST, ImageFiles, ImageFolder, ImageSource, SamplePhotos, build_source
from mimkit.data.transforms import eval_transform, pretrain_transform

__all__ = [
    "AugmentedDataset",
    "FashionMNIST",
    "ImageFiles",
    "ImageFolder",
    "ImageSource",
    "SamplePhotos",
    "StepSampler",
    "batch_loader",
    "build_source",
    "collate_items",
    "eval_transform",
    "load_readable",
    "pretrain_transform",
    "readable_batches",
]
