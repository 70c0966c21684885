"""Where images come from. A source knows how many images it has, loads one as a PIL image (or raises),
and has labels when they exist (class sub-folders, Fashion-MNIST)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mimkit.data.decode import open_image
from mimkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Natural photos that scikit-image ships inside its wheel (no download); grayscale ones are used as-is.
SAMPLE_PHOTO_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


class ImageSource:
    """Base class: ``len(source)``, ``source.load(i) -> PIL.Image``, ``source.labels`` (list or None)."""

    labels: list[int] | None = None
    class_names: list[str] | None = None
    root: Path | None = None
    """The folder the items come from, when there is one (named in error messages)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        return f"{type(self).__name__}[{index}]"

    def file_of(self, index: int) -> Path | None:
        """The image file item ``index`` is decoded from, when it is one whole file (read directly by transforms
        that decode for their crop)."""
        return None


def existing_folder(root: str | Path, kind: str) -> Path:
    """``root`` as a path, or a clear error when it is missing or not a folder (``kind``: image, clip)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{kind} folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is a file; point the data path at the folder that holds the {kind}s")
    return root


class ImageFiles(ImageSource):
    """A list of image files, decoded on demand by :func:`~mimkit.data.decode.open_image`."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return open_image(self.paths[index])

    def name_of(self, index: int) -> str:
        return str(self.paths[index])

    def file_of(self, index: int) -> Path:
        return self.paths[index]


class ImageFolder(ImageFiles):
    """Every image under ``root`` (recursive). Labels come from first-level sub-folders when all images sit
    in such sub-folders; a flat folder has no labels (fine for pretraining)."""

    def __init__(self, root: str | Path) -> None:
        self.root = existing_folder(root, "image")
        super().__init__(
            sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        )
        if not self.paths:
            raise DataError(
                f"no images found under {self.root} (searched recursively for {' '.join(IMAGE_EXTENSIONS)}); "
                "point --data (data.path) at a folder that holds images"
            )
        top = [p.relative_to(self.root).parts for p in self.paths]
        if all(len(parts) > 1 for parts in top):
            self.class_names = sorted({parts[0] for parts in top})
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = [index[parts[0]] for parts in top]


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files among ``paths`` (by extension), each folder's images (recursive, sorted) in its place."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files.extend(ImageFolder(item).paths)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"image not found: {item}")
    return [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]


class ArraySource(ImageSource):
    """Images held in memory as uint8 arrays (``(H, W)`` or ``(H, W, 3)``)."""

    def __init__(self, arrays: list[np.ndarray] | np.ndarray, labels: list[int] | None = None) -> None:
        self.arrays = arrays
        self.labels = labels

    def __len__(self) -> int:
        return len(self.arrays)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.arrays[index]))


class SamplePhotos(ArraySource):
    """The embedded default data: the natural photos that scikit-image ships (no download needed)."""

    def __init__(self) -> None:
        import skimage.data

        super().__init__([getattr(skimage.data, name)() for name in SAMPLE_PHOTO_NAMES])

    def name_of(self, index: int) -> str:
        return f"skimage.data.{SAMPLE_PHOTO_NAMES[index]}"


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; optionally gzip-compressed) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or point data.path at the folder of idx files"
    )


class FashionMNIST(ArraySource):
    """Fashion-MNIST (28x28 grayscale, 10 classes) from its IDX files; ``split`` is 'train' or 'test'."""

    def __init__(self, root: str | Path | None = None, split: str = "train") -> None:
        root = Path(root) if root else FASHION_MNIST_DIR
        prefix = {"train": "train", "test": "t10k"}.get(split)
        if prefix is None:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        super().__init__(images, labels.astype(np.int64).tolist())
        self.class_names = list(FASHION_MNIST_CLASSES)


def build_source(kind: str, path: str | None = None, split: str = "train") -> ImageSource:
    """Source by config name: ``samples``, ``folder`` (needs ``path``) or ``fashion_mnist``."""
    if kind == "samples":
        return SamplePhotos()
    if kind == "folder":
        if not path:
            raise DataError("data.source 'folder' needs data.path (or --data PATH) naming a folder of images")
        return ImageFolder(path)
    if kind == "fashion_mnist":
        return FashionMNIST(path, split)
    raise ValueError(f"unknown data source {kind!r}; choose samples, folder or fashion_mnist")
