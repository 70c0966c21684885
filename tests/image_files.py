"""Image files that Pillow cannot write, built byte by byte: 16-bit colour PNGs and bare PNG headers."""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAY, PNG_RGB = 0, 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int = 8, color_type: int = PNG_RGB) -> bytes:
    """A 45-byte PNG: signature, a header claiming ``width`` x ``height`` pixels, no pixel data, the end marker."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of a ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB) uint16 array."""
    height, width = pixels.shape[:2]
    color_type = PNG_RGB if pixels.ndim == 3 else PNG_GRAY
    rows = pixels.astype(">u2").reshape(height, -1)
    scanlines = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(scanlines)) + _chunk(b"IEND", b"")
