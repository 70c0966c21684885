"""Decoding images into the 8-bit grayscale ("L") or RGB pictures every transform starts from.

Pillow opens many pixel formats that its ``convert("RGB")`` would clip (16-bit PNGs and integer TIFFs turn white,
float TIFFs black). Every image mimkit reads goes through :func:`open_image` (files) and :func:`to_8bit` (any PIL
image), with these rules:

* Orientation: the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``): photos are seen upright.
* Integers wider than 8 bits are scaled by their type's full range and rounded: unsigned 16-bit by 65535, unsigned
  32-bit by 2**32 - 1. Signed types keep 0 as black: positive values are scaled by the type's maximum (32767,
  2**31 - 1) and negative values clip to black, as scikit-image's ``img_as_ubyte`` does. The type is the file's:
  16-bit PNG and PGM are unsigned 16-bit, a TIFF states its bits and signedness (``BitsPerSample``,
  ``SampleFormat``; a signed 8-bit TIFF follows the signed rule too), and Pillow's 32-bit mode ``I`` of any other
  origin counts as signed 32-bit. Pillow itself reads 16-bit colour PNGs and TIFFs as 8-bit (their high byte).
* Floats are intensities in [0, 1]: values outside are clipped. An image holding NaN or infinity is unreadable.
* Transparency is composited onto black (``colour x alpha / 255``; fully transparent pixels are black): RGBA, LA,
  premultiplied modes, and palette, gray or RGB images with a transparent colour.
* Palette, 1-bit (0 or 255), CMYK (``255 - C`` times ``(255 - K) / 255``, no colour profile), YCbCr and other
  colour modes use Pillow's conversion to RGB; a mode Pillow cannot convert is unreadable.
* Grayscale stays one channel ("L"), everything else is RGB; the transforms then convert to the model's
  ``in_chans`` (RGB to gray by ITU-R 601 luma, gray to RGB by copying the channel).
* A file whose header claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before anything is
  decoded (Pillow's decompression-bomb warning counts as an error, not only its error at twice the limit).

Whatever cannot be decoded raises one of :data:`UNREADABLE_IMAGE_ERRORS` (any other error while decoding a file
becomes an ``OSError``: Pillow fails on some corrupt files with e.g. ``TypeError``); the data pipeline skips and
counts it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# What decoding raises for a file that is not an image, is truncated, corrupt inside, or refused.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)

TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT, TIFF_SIGNED = 258, 339, 2
EXIF_ORIENTATION = 0x0112
SINGLE_CHANNEL_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
GRAY_WITH_ALPHA_MODES = ("LA", "La")
ALPHA_MODES = ("RGBA", "RGBa", "PA", *GRAY_WITH_ALPHA_MODES)


def open_image(path: str | Path) -> Image.Image:
    """The image file at ``path`` decoded by this module's rules: an upright 8-bit "L" or "RGB" image."""
    return open_image_reduced(path, lambda width, height: 1)[0]


def open_image_reduced(path: str | Path, choose_reduction: Callable[[int, int], int]) -> tuple[Image.Image, int]:
    """The image at ``path`` as :func:`open_image` decodes it, possibly shrunk by a factor the caller chooses.

    ``choose_reduction(width, height)`` is called once with the upright full size and returns 1, 2, 4 or 8. A
    plain 8-bit JPEG (mode "RGB" or "L") without an EXIF rotation or mirroring is then decoded at that reduced
    size by libjpeg's scaled decoding (``Image.draft``: size ``ceil(width / s)`` x ``ceil(height / s)``, pixel
    ``(x, y)`` covering the full image's ``[s*x, s*x + s)`` x ``[s*y, s*y + s)``); every other image is decoded
    whole by the rules above. Returns the image and the reduction applied (1 for those others).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if _draftable(image):
                    return _drafted(image, choose_reduction(*image.size))
                sample_type = _stored_sample_type(image)
                decoded = to_8bit(ImageOps.exif_transpose(image), sample_type)
                choose_reduction(*decoded.size)
                return decoded, 1
    except UNREADABLE_IMAGE_ERRORS:
        raise
    except Exception as err:  # decompression bombs, and Pillow failing on some corrupt files with any error type
        raise OSError(f"cannot decode ({type(err).__name__}: {err})") from err


def _draftable(image: Image.Image) -> bool:
    """A JPEG that libjpeg can decode shrunk and that none of this module's rules changes: 8-bit RGB or gray,
    opaque, upright (the rotation of a reduced image would misplace the crop by the last partial block)."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and "transparency" not in image.info
        and image.getexif().get(EXIF_ORIENTATION, 1) == 1
    )


def _drafted(image: Image.Image, reduction: int) -> tuple[Image.Image, int]:
    if reduction > 1:
        width = image.width
        drafted = image.draft(None, (image.width // reduction, image.height // reduction))
        reduction = 1 if drafted is None else round(width / drafted[1][2])
    image.load()  # leaving the file's context closes only the file: the decoded pixels stay
    return image, reduction


def _stored_sample_type(image: Image.Image) -> np.dtype | None:
    """The integer type a file stores single-channel samples in, where Pillow's mode does not tell it."""
    if image.format in ("PNG", "PPM"):
        return np.dtype(np.uint16)  # their only samples wider than 8 bits; some Pillow versions say mode "I"
    if image.format != "TIFF":
        return None
    bits = _first(image.tag_v2.get(TIFF_BITS_PER_SAMPLE, 8))
    signed = _first(image.tag_v2.get(TIFF_SAMPLE_FORMAT, 1)) == TIFF_SIGNED
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}") if bits in (8, 16, 32) else None


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def to_8bit(image: Image.Image, sample_type: np.dtype | None = None) -> Image.Image:
    """``image`` as 8-bit "L" (single-channel modes) or "RGB" (the rest) by this module's rules; ``sample_type``
    is the integer type the pixels were stored in when the mode alone does not say it (see :func:`open_image`)."""
    if image.mode in ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _onto_black(image)
    if image.mode == "1":
        return image.convert("L")
    if image.mode in SINGLE_CHANNEL_MODES:
        return _scaled_gray(image, sample_type)
    return image if image.mode == "RGB" else image.convert("RGB")


def _onto_black(image: Image.Image) -> Image.Image:
    black = Image.new("RGBA", image.size, (0, 0, 0, 255))
    composite = Image.alpha_composite(black, image.convert("RGBA")).convert("RGB")
    return composite.convert("L") if image.mode in (*GRAY_WITH_ALPHA_MODES, "L") else composite


def _scaled_gray(image: Image.Image, sample_type: np.dtype | None) -> Image.Image:
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        if not np.isfinite(pixels).all():
            raise ValueError("the image holds NaN or infinite pixel values")
        unit = pixels.astype(np.float64)
    else:
        if sample_type is not None and sample_type.itemsize == pixels.dtype.itemsize:  # e.g. uint32 read as int32
            pixels = pixels.view(sample_type.newbyteorder(pixels.dtype.byteorder))
        if pixels.dtype == np.uint8:
            return image
        unit = pixels / np.iinfo(pixels.dtype if sample_type is None else sample_type).max
    return Image.fromarray(np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8), "L")
