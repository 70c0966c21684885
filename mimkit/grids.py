"""Grid arithmetic shared by the models and their configurations (no torch needed)."""

from __future__ import annotations


def grid_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid of an input, with a clear error when the size is not a multiple of the patch."""
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"choose an image size that is a multiple of {patch_size}"
        )
    return height // patch_size, width // patch_size


def split_width(dim: int) -> tuple[int, int]:
    """``(spatial, temporal)`` channel counts of a ``dim``-wide spatio-temporal sin-cos table."""
    if dim % 16:
        raise ValueError(f"spatio-temporal sin-cos positions need a width divisible by 16, got {dim}")
    return dim - dim // 4, dim // 4
