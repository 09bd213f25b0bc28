"""The image loader on hostile files (issue 23, items 3 and 7): random bytes, truncated files of
every format, headers declaring extreme sizes, and images of every PIL mode.

Each file either loads as a ``[C, H, W]`` float tensor in [0, 1], or is refused with one
:class:`~bmssl.data.images.CorruptImageError` line that names it; nothing else escapes, and no
header makes the loader allocate what it declares. Declared sizes are drawn either beyond
Pillow's decompression-bomb limit (refused before any pixel is decoded) or small: sizes just
under the limit would make every example allocate hundreds of megabytes on a shared box.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bmssl.data.base import FileImageDataset
from bmssl.data.images import CorruptImageError, convert_image
from bmssl.errors import UserError

FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tif": "TIFF", "webp": "WEBP"}
#: every mode Pillow can create an image in (convert_image must take each)
MODES = [
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
    "HSV", "I", "I;16", "I;16L", "I;16B", "I;16N", "F",
]  # fmt: skip


def _load(name: str, data: bytes, channels: int = 3) -> None:
    """Write ``data`` as ``name`` and read it through the dataset: a tensor, or one clean
    CorruptImageError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        dataset = FileImageDataset([path], [0], ["a"], image_size=8, channels=channels)
        try:
            image, label = dataset[0]
        except CorruptImageError as err:
            message = str(err)
            assert "\n" not in message and str(path) in message and "skip_corrupt" in message
            return
        assert image.shape == (channels, 8, 8) and label == 0
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def _encoded(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, format=FORMATS[fmt])
    return buffer.getvalue()


@given(name=st.sampled_from([f"x.{ext}" for ext in FORMATS]), data=st.binary(max_size=2048))
def test_random_bytes(name, data):
    _load(name, data)


@given(
    ext=st.sampled_from(sorted(FORMATS)),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    seed=st.integers(0, 2**16),
    cut=st.floats(0.0, 1.0),
)
def test_truncated_files_of_every_format(ext, size, seed, cut):
    data = _encoded(ext, size, seed)
    _load(f"x.{ext}", data[: int(len(data) * cut)])


@given(
    ext=st.sampled_from(sorted(FORMATS)),
    seed=st.integers(0, 2**16),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
)
def test_damaged_bytes_of_every_format(ext, seed, flips):
    data = bytearray(_encoded(ext, (16, 12), seed))
    for where, value in flips:
        data[where % len(data)] = value
    _load(f"x.{ext}", bytes(data))


def _png_header(width: int, height: int, depth: int, colour: int, body: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IEND", b"")


def _declared_sizes() -> st.SearchStrategy[tuple[int, int]]:
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    small = st.tuples(st.integers(1, 2000), st.integers(1, 2000))
    huge = st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).filter(
        lambda wh: wh[0] * wh[1] > limit
    )
    return st.one_of(small, huge, st.sampled_from([(2**31 - 1, 2**31 - 1), (limit + 1, 1)]))


@given(
    size=_declared_sizes(),
    depth_colour=st.sampled_from(
        [(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (8, 6)]
    ),
    body=st.binary(max_size=64),
)
def test_png_headers_declaring_extreme_sizes(size, depth_colour, body):
    depth, colour = depth_colour
    idat = (
        struct.pack(">I", len(body))
        + b"IDAT"
        + body
        + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    )
    _load("x.png", _png_header(size[0], size[1], depth, colour, idat))


@given(size=_declared_sizes(), bits=st.sampled_from([1, 8, 24, 32]))
def test_bmp_headers_declaring_extreme_sizes(size, bits):
    width, height = size
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info))
    _load("x.bmp", header + info + bytes(16))


def _mode_image(mode: str, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    if mode in ("I", "F"):
        dtype = np.int32 if mode == "I" else np.float32
        return Image.fromarray(
            (rng.standard_normal((h, w)) * 10 ** rng.integers(0, 9)).astype(dtype), mode
        )
    if mode.startswith("I;16"):
        return Image.new(mode, (w, h), int(rng.integers(0, 65536)))
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode in ("P", "PA"):
        img = base.quantize(8)
        return img if mode == "P" else img.convert("PA")
    return base.convert(mode)


@pytest.mark.parametrize("channels", [1, 3])
@given(
    mode=st.sampled_from(MODES), w=st.integers(1, 20), h=st.integers(1, 20), seed=st.integers(0, 99)
)
def test_every_pil_mode_converts_to_8_bit(channels, mode, w, h, seed):
    try:
        img = _mode_image(mode, np.random.default_rng(seed), w, h)
    except (ValueError, OSError):
        return  # this Pillow cannot make the mode from RGB: nothing to convert
    try:
        out = convert_image(img, channels, "test image")
    except UserError as err:  # a mode Pillow cannot convert: one line naming it
        assert "\n" not in str(err) and mode in str(err)
        return
    assert out.mode == ("L" if channels == 1 else "RGB") and out.size == (w, h)


@given(mode=st.sampled_from(MODES), seed=st.integers(0, 99))
def test_every_mode_a_format_can_store_loads_from_disk(mode, seed):
    try:
        img = _mode_image(mode, np.random.default_rng(seed), 9, 7)
    except (ValueError, OSError):
        return
    for ext in ("png", "tif", "webp", "bmp"):
        buffer = io.BytesIO()
        try:
            img.save(buffer, format=FORMATS[ext])
        except (OSError, ValueError, KeyError):
            continue  # the format cannot hold the mode
        _load(f"x.{ext}", buffer.getvalue())
