"""Reconstruction targets: pure functions of the image, computed on the device under no_grad."""

from mimkit.targets.hog import HOGTarget
from mimkit.targets.pixels import normalized_pixels, pixel_target

__all__ = ["HOGTarget", "normalized_pixels", "pixel_target"]
