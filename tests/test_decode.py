"""Every image mode decodes to the 8-bit picture its pixels mean, checked against reference decodes of known
arrays; decompression bombs are refused before anything is decoded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image

from mimkit.data import ImageFiles, eval_transform, load_readable
from mimkit.data.transforms import ConvertMode
from tests.image_files import png16, png_header

RNG = np.random.default_rng(0)
SHAPE = (6, 5)


def decode(path) -> tuple[str, np.ndarray]:
    """What the data pipeline reads from an image file: its mode and pixels."""
    image = ImageFiles([path]).load(0)
    return image.mode, np.asarray(image)


def scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    """The reference: ``values / full_scale`` clipped to [0, 1], as rounded 8-bit levels."""
    return np.round(np.clip(values.astype(np.float64) / full_scale, 0, 1) * 255).astype(np.uint8)


def assert_within_one_level(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - np.round(expected).astype(int)).max() <= 1


def test_8bit_gray_and_rgb_pass_unchanged(tmp_path):
    for name, pixels in (("gray", RNG.integers(0, 256, SHAPE)), ("rgb", RNG.integers(0, 256, (*SHAPE, 3)))):
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{name}.png")
        mode, decoded = decode(tmp_path / f"{name}.png")
        assert mode == ("L" if name == "gray" else "RGB")
        np.testing.assert_array_equal(decoded, pixels)


def test_16bit_gray_png_is_scaled_by_65535(tmp_path):
    pixels = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    pixels[0, :2] = (0, 65535)
    Image.fromarray(pixels).save(tmp_path / "gray16.png")
    mode, decoded = decode(tmp_path / "gray16.png")
    assert mode == "L"
    np.testing.assert_array_equal(decoded, scaled(pixels, 65535))


def test_big_endian_16bit_gray_is_scaled_by_65535():
    pixels = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    image = Image.frombytes("I;16B", SHAPE[::-1], pixels.astype(">u2").tobytes())
    decoded = ConvertMode(1)(image)
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), scaled(pixels, 65535))


def test_16bit_rgb_png_keeps_its_colours(tmp_path):
    pixels = RNG.integers(0, 65536, (*SHAPE, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(png16(pixels))
    mode, decoded = decode(tmp_path / "rgb16.png")
    assert mode == "RGB"
    assert_within_one_level(decoded, scaled(pixels, 65535))  # Pillow keeps the high byte


INTEGER_TIFFS = [(dtype, "<") for dtype in (np.uint16, np.int16, np.uint32, np.int32, np.int8)] + [
    (dtype, ">") for dtype in (np.uint16, np.int16, np.int32)  # Pillow cannot open big-endian uint32 at all
]


@pytest.mark.parametrize(("dtype", "byteorder"), INTEGER_TIFFS)
def test_integer_tiffs_are_scaled_by_their_types_range(tmp_path, dtype, byteorder):
    """Unsigned: 0..max is black..white; signed: negatives clip to black, 0..max is black..white."""
    info = np.iinfo(dtype)
    pixels = RNG.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)
    pixels[0, :3] = (info.min, 0, info.max)
    tifffile.imwrite(tmp_path / "ints.tif", pixels, byteorder=byteorder)
    mode, decoded = decode(tmp_path / "ints.tif")
    assert mode == "L"
    np.testing.assert_array_equal(decoded, scaled(pixels, info.max))


def test_float_tiff_is_read_as_0_to_1_and_clipped(tmp_path):
    pixels = RNG.uniform(-0.5, 1.5, SHAPE).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", pixels)
    mode, decoded = decode(tmp_path / "float.tif")
    assert mode == "L"
    np.testing.assert_array_equal(decoded, scaled(pixels, 1.0))


def test_float_tiff_with_nan_is_skipped_as_unreadable(tmp_path):
    pixels = RNG.uniform(0, 1, SHAPE).astype(np.float32)
    pixels[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "a_nan.tif", pixels)
    Image.new("L", (8, 8), 100).save(tmp_path / "b_good.png")
    files = ImageFiles([tmp_path / "a_nan.tif", tmp_path / "b_good.png"])
    batch, skipped = load_readable(files, eval_transform(8, 1, [0.5], [0.25]))
    assert batch is not None and len(batch) == 1
    assert len(skipped) == 1 and "a_nan.tif" in skipped[0] and "NaN" in skipped[0]


def test_rgba_is_composited_onto_black(tmp_path):
    pixels = RNG.integers(0, 256, (*SHAPE, 4), dtype=np.uint8)
    pixels[0, 0, 3], pixels[0, 1, 3] = 0, 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    mode, decoded = decode(tmp_path / "rgba.png")
    assert mode == "RGB"
    assert_within_one_level(decoded, pixels[..., :3] * (pixels[..., 3:] / 255))
    assert decoded[0, 0].tolist() == [0, 0, 0] and decoded[0, 1].tolist() == pixels[0, 1, :3].tolist()


def test_gray_with_alpha_is_composited_onto_black_and_stays_gray(tmp_path):
    pixels = RNG.integers(0, 256, (*SHAPE, 2), dtype=np.uint8)
    Image.fromarray(pixels, "LA").save(tmp_path / "la.png")
    mode, decoded = decode(tmp_path / "la.png")
    assert mode == "L"
    assert_within_one_level(decoded, pixels[..., 0] * (pixels[..., 1] / 255))


def test_palette_with_a_transparent_entry(tmp_path):
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 150, 100]], dtype=np.uint8)
    indices = RNG.integers(0, 4, SHAPE).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "palette.png", transparency=2)
    mode, decoded = decode(tmp_path / "palette.png")
    expected = palette[indices]
    expected[indices == 2] = 0
    assert mode == "RGB"
    np.testing.assert_array_equal(decoded, expected)


def test_cmyk_tiff(tmp_path):
    pixels = RNG.integers(0, 256, (*SHAPE, 4), dtype=np.uint8)
    Image.fromarray(pixels, "CMYK").save(tmp_path / "cmyk.tif")
    mode, decoded = decode(tmp_path / "cmyk.tif")
    assert mode == "RGB"
    assert_within_one_level(decoded, (255.0 - pixels[..., :3]) * (255.0 - pixels[..., 3:]) / 255)


def test_one_bit_image_is_black_and_white(tmp_path):
    bits = RNG.integers(0, 2, SHAPE).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    mode, decoded = decode(tmp_path / "bits.png")
    assert mode == "L"
    np.testing.assert_array_equal(decoded, bits * 255)


def test_ycbcr_is_converted_by_the_jfif_formula():
    ycc = RNG.integers(0, 256, (*SHAPE, 3)).astype(np.float64)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    expected = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    decoded = np.asarray(ConvertMode(3)(Image.fromarray(ycc.astype(np.uint8), "YCbCr")))
    assert_within_one_level(decoded, np.clip(expected, 0, 255))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    """Orientation 6 means "rotate 90 degrees clockwise to display"."""
    pixels = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / f"rotated{suffix}"
    Image.fromarray(pixels).save(path, exif=exif)
    with Image.open(path) as stored:  # the reference: the stored pixels as Pillow decodes them, turned upright
        expected = np.rot90(np.asarray(stored.convert("RGB")), k=-1)
    mode, decoded = decode(path)
    assert mode == "RGB" and decoded.shape == (6, 4, 3)
    np.testing.assert_array_equal(decoded, expected)
    if suffix == ".png":
        np.testing.assert_array_equal(decoded, np.rot90(pixels, k=-1))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_a_16bit_png_gives_the_model_what_its_8bit_version_gives(tmp_path, in_chans):
    """Through the evaluation transform, a 16-bit image equals its 8-bit rendering (before: a white image)."""
    pixels = RNG.integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    (tmp_path / "deep.png").write_bytes(png16(pixels if in_chans == 3 else pixels[..., 0]))
    reference = scaled(pixels if in_chans == 3 else pixels[..., 0], 65535)
    Image.fromarray(reference).save(tmp_path / "reference.png")
    mean, std = [0.5] * in_chans, [0.25] * in_chans
    transform = eval_transform(32, in_chans, mean, std)
    batch, skipped = load_readable(ImageFiles([tmp_path / "deep.png", tmp_path / "reference.png"]), transform)
    assert not skipped
    assert (batch[0] - batch[1]).abs().max().item() <= 1.01 / 255 / 0.25  # within one 8-bit level
    assert batch[0].std() > 0.5


def _over_the_limit() -> int:
    """A square side whose pixel count lies between Pillow's limit and twice it (where Pillow only warns)."""
    side = math.isqrt(int(1.5 * Image.MAX_IMAGE_PIXELS))
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    return side


@pytest.mark.parametrize("side", [100_000, _over_the_limit()], ids=["error-size", "warning-size"])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    assert (tmp_path / "bomb.png").stat().st_size == 45
    with pytest.raises(OSError, match="exceeds limit"):
        ImageFiles([tmp_path / "bomb.png"]).load(0)



def test_a_file_pillow_fails_on_with_an_odd_error_is_skipped_not_fatal(tmp_path):
    """Pillow raises ``TypeError`` for a TIFF whose strip offsets are typed as fractions: unreadable, skipped."""
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.ones(SHAPE, dtype=np.int16))
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        at = ifd + 2 + 12 * entry
        if int.from_bytes(data[at : at + 2], "little") == 273:  # StripOffsets
            data[at + 2 : at + 4] = (10).to_bytes(2, "little")  # type SRATIONAL
    path.write_bytes(bytes(data))
    Image.new("L", (8, 8), 50).save(tmp_path / "z_good.png")
    files = ImageFiles([path, tmp_path / "z_good.png"])
    batch, skipped = load_readable(files, eval_transform(8, 1, [0.5], [0.25]))
    assert batch is not None and len(batch) == 1
    assert len(skipped) == 1 and "odd.tif" in skipped[0]
