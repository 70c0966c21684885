"""Files for transfer tests: a one-step pretraining checkpoint, and tiny labelled data that needs no Fashion-MNIST
(an image folder with train/ and val/, one sub-folder per class, and idx files in Fashion-MNIST's format; class
``k`` is noise around a brightness of its own)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from mimkit.cli import main

TINY_RGB_ENCODER = [
    "model.args.patch_size=8",
    "model.args.embed_dim=32",
    "model.args.depth=2",
    "model.args.num_heads=2",
    "data.img_size=32",
    "data.in_chans=3",
    "data.mean=[0.5,0.5,0.5]",
    "data.std=[0.25,0.25,0.25]",
    "data.num_workers=0",
]
"""Transfer overrides for a tiny random-init ViT on RGB images resized to 32 px (read in the main process)."""


def pretrain_checkpoint(output: Path, *overrides: str) -> Path:
    """One pretraining step through the command line into ``output``; returns its checkpoint."""
    assert main(["pretrain", *overrides, "train.max_steps=1", "train.visualize_images=0", f"output={output}"]) == 0
    return output / "checkpoints" / "last.safetensors"


def write_labelled_images(root: Path, per_class: int = 16, val_per_class: int = 4, size: int = 20) -> list[str]:
    """Write two classes of RGB images under ``root``; returns the ``data.*`` overrides that read them."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 96, (size, size, 3)) + 128 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.png")
    return ["data.source=folder", f"data.train_path={root / 'train'}", f"data.val_path={root / 'val'}"]


def write_fashion_mnist_files(root: Path, train: int = 128, test: int = 64) -> Path:
    """Idx files in Fashion-MNIST's format and names (28 x 28 grayscale, 10 classes, labels in turn) under
    ``root``, for ``data.train_path``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = (rng.integers(0, 64, (count, 28, 28)) + 20 * labels[:, None, None]).astype(np.uint8)
        header = struct.pack(">HBBIII", 0, 8, 3, count, 28, 28)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, count) + labels.tobytes())
    return root
