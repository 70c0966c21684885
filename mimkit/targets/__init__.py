"""Reconstruction targets: pure functions of the image, computed on the device under no_grad."""

from mimkit.targets.pixels import normalized_pixels, pixel_target

__all__ = ["normalized_pixels", "pixel_target"]
