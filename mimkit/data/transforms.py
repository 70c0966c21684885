"""Image transforms: MAE's pretraining augmentation and a deterministic resize for evaluation/visualization."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

from mimkit.data.decode import to_8bit


class ConvertMode:
    """Convert a PIL image of any mode to 8-bit grayscale (``in_chans=1``) or RGB (``in_chans=3``) by the rules of
    :mod:`mimkit.data.decode`; picklable for workers."""

    def __init__(self, in_chans: int) -> None:
        modes = {1: "L", 3: "RGB"}
        if in_chans not in modes:
            raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        self.mode = modes[in_chans]

    def __call__(self, image):
        return to_8bit(image).convert(self.mode)


def pretrain_transform(
    img_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
) -> T.Compose:
    """Random-resized-crop (scale 0.2-1, bicubic) + horizontal flip (unless ``hflip`` is off) + normalize, as MAE
    pretrains."""
    return T.Compose(
        [
            ConvertMode(in_chans),
            T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            *([T.RandomHorizontalFlip()] if hflip else []),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize the short side to ``img_size`` and center-crop a square, then normalize."""
    return T.Compose(
        [
            ConvertMode(in_chans),
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
