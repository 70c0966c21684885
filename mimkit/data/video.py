"""Video clips: where they come from and how a clip becomes a ``(C, T, H, W)`` tensor.

A clip source is an :class:`~mimkit.data.sources.ImageSource` whose ``load`` returns the clip's frames, themselves
an image source (frames are read on demand), so the dataset, sampler and unreadable-input policy of images serve
clips unchanged: a frame that cannot be read, or a video file that cannot be decoded, raises one of
``UNREADABLE_IMAGE_ERRORS`` and the clip is skipped and counted.

* :class:`ClipFolder`: every clip under a root, a clip being a folder of frame images (sorted by name) or a
  video file (decoded with PyAV, the ``video`` extra). Clips in first-level class sub-folders are labelled.
* :class:`SampleClips`: clips made by panning and zooming over scikit-image's sample photos (seeded, no files).

:class:`ClipTransform` samples ``num_frames`` frames ``stride`` apart (VideoMAE's temporal sampling: a random start
for training, the middle for evaluation; a clip shorter than the span repeats its last frame) and runs an image
transform on every frame with the same random draws, so one crop, flip or RandAugment applies to the whole clip.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mimkit.data.sources import IMAGE_EXTENSIONS, SAMPLE_PHOTO_NAMES, ImageFiles, ImageSource, existing_folder
from mimkit.engine.config_parts import CLIP_SOURCES
from mimkit.errors import DataError, MimkitError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class DecodedFrames(ImageSource):
    """Frames already decoded into memory."""

    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return self.images[index]


def read_video(path: str | Path) -> DecodedFrames:
    """Every frame of a video file, decoded with PyAV (``pip install mimkit[video]``). A file PyAV cannot open or
    decode raises ``OSError``, so the clip counts as unreadable."""
    try:
        import av
    except ImportError as err:
        raise MimkitError(f"reading video files ({path}) needs PyAV: pip install mimkit[video]") from err
    try:
        with av.open(str(path)) as container:
            images = [frame.to_image() for frame in container.decode(video=0)]
    except (av.FFmpegError, IndexError) as err:
        raise OSError(f"cannot decode video {path}: {err}") from err
    if not images:
        raise OSError(f"video {path} has no frames")
    return DecodedFrames(images)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


class ClipFolder(ImageSource):
    """Every clip under ``root`` (recursive): each folder that holds frame images directly, and each video file.
    Labels come from first-level sub-folders when every clip sits inside one (one sub-folder per class)."""

    def __init__(self, root: str | Path) -> None:
        self.root = existing_folder(root, "clip")
        frame_dirs = {p.parent for p in self.root.rglob("*") if _is_image(p)}
        videos = {p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()}
        self.clips = sorted(frame_dirs | videos)
        if not self.clips:
            raise DataError(
                f"no clips found under {self.root}: expected folders of frames ({', '.join(IMAGE_EXTENSIONS)}) "
                f"or video files ({', '.join(VIDEO_EXTENSIONS)})"
            )
        parts = [clip.relative_to(self.root).parts for clip in self.clips]
        if all(len(p) > 1 for p in parts):
            self.class_names = sorted({p[0] for p in parts})
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = [index[p[0]] for p in parts]

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int) -> ImageSource:
        clip = self.clips[index]
        if clip.is_dir():
            return ImageFiles(sorted(p for p in clip.iterdir() if _is_image(p)))
        return read_video(clip)

    def name_of(self, index: int) -> str:
        return str(self.clips[index])


class PanZoomFrames(ImageSource):
    """Frames of a camera moving over a still photo: a square window whose centre and side move linearly from a
    start box to an end box, each frame resized to ``size`` pixels."""

    def __init__(self, photo: Image.Image, start: np.ndarray, end: np.ndarray, length: int, size: int) -> None:
        self.photo, self.start, self.end, self.length, self.size = photo, start, end, length, size

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> Image.Image:
        cx, cy, side = self.start + (self.end - self.start) * index / max(self.length - 1, 1)
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        return self.photo.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)


def _random_box(rng: np.random.Generator, width: int, height: int, side: float) -> np.ndarray:
    """``(cx, cy, side)`` of a random square of ``side`` inside the photo."""
    return np.array([rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2), side])


class SampleClips(ImageSource):
    """``clips_per_photo`` clips of ``length`` frames per sample photo (clip ``i`` shows photo ``i mod 18``), each a
    seeded pan and zoom (the window's side changes by up to 30% over the clip). The embedded video data: no files,
    no download."""

    def __init__(self, clips_per_photo: int = 4, length: int = 32, size: int = 128, seed: int = 0) -> None:
        import skimage.data

        self.photos = [Image.fromarray(getattr(skimage.data, name)()) for name in SAMPLE_PHOTO_NAMES]
        self.clips_per_photo, self.length, self.size, self.seed = clips_per_photo, length, size, seed

    def __len__(self) -> int:
        return len(self.photos) * self.clips_per_photo

    def load(self, index: int) -> PanZoomFrames:
        photo = self.photos[index % len(self.photos)]
        rng = np.random.default_rng([self.seed, index])
        width, height = photo.size
        shortest = min(width, height)
        side = rng.uniform(0.4, 0.75) * shortest
        end_side = min(side * rng.uniform(0.7, 1.3), shortest)
        start, end = _random_box(rng, width, height, side), _random_box(rng, width, height, end_side)
        return PanZoomFrames(photo, start, end, self.length, self.size)

    def name_of(self, index: int) -> str:
        return f"sample clip {index} (skimage.data.{SAMPLE_PHOTO_NAMES[index % len(self.photos)]})"


def build_clip_source(kind: str, path: str | None = None) -> ImageSource:
    """Clip source by config name: ``sample_clips`` or ``clips`` (needs ``path``)."""
    if kind == "sample_clips":
        return SampleClips()
    if kind == "clips":
        if not path:
            raise DataError("data.source 'clips' needs a path naming a folder of clips (frame folders or videos)")
        return ClipFolder(path)
    raise ValueError(f"unknown clip source {kind!r}; choose {' or '.join(CLIP_SOURCES)}")


def clip_indices(length: int, num_frames: int, stride: int, random_start: bool) -> list[int]:
    """``num_frames`` frame indices ``stride`` apart: from a random start (drawn with torch's generator) or
    centred in the clip; indices past the end repeat the last frame."""
    span = (num_frames - 1) * stride + 1
    room = max(length - span, 0)
    start = int(torch.randint(room + 1, ())) if random_start else room // 2
    return [min(start + k * stride, length - 1) for k in range(num_frames)]


class ClipTransform:
    """Sample a clip's frames and run ``frame_transform`` on each with the same random draws (torch, Python and
    NumPy generators rewound before every frame); returns ``(C, num_frames, H, W)``. Picklable for workers."""

    def __init__(self, frame_transform: Callable, num_frames: int, stride: int, random_start: bool) -> None:
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames and frame stride must be at least 1, got {num_frames} and {stride}")
        self.frame_transform = frame_transform
        self.num_frames, self.stride, self.random_start = num_frames, stride, random_start

    def __call__(self, frames: ImageSource) -> torch.Tensor:
        indices = clip_indices(len(frames), self.num_frames, self.stride, self.random_start)
        loaded = {index: frames.load(index) for index in sorted(set(indices))}
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        tensors = []
        for index in indices:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])
            tensors.append(self.frame_transform(loaded[index]))
        return torch.stack(tensors, dim=1)
