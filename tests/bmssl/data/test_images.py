"""Image decoding: every PIL mode to 8-bit L / RGB, and undecodable files (bmssl.data.images)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmssl.data import CorruptImageError, convert_image, get_dataset
from bmssl.errors import UserError
from tests.fakes import fake_pets

S = 4  # images are S x S and loaded at image_size=S, so no resampling blurs the pixels


def rgb(*pixel: int) -> np.ndarray:
    """An S x S x 3 array filled with ``pixel``."""
    return np.broadcast_to(np.asarray(pixel, dtype=np.float64), (S, S, 3))


GRADIENT16 = np.arange(S * S, dtype=np.int64).reshape(S, S) * 4369  # 0 .. 65535


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[..., None], 3, axis=2)


def palette_image(transparent: bool) -> Image.Image:
    img = Image.fromarray(np.tile(np.array([[0, 1], [1, 0]], dtype=np.uint8), (2, 2)), "P")
    img.putpalette([255, 0, 0, 0, 128, 0] + [0] * 762)
    if transparent:
        img.info["transparency"] = 0
    return img


def rgba_image() -> Image.Image:
    pixels = np.zeros((S, S, 4), dtype=np.uint8)
    pixels[0] = (255, 0, 0, 128)  # half-transparent red: pink on white
    pixels[1] = (0, 0, 0, 0)  # fully transparent: white
    pixels[2:] = (0, 0, 255, 255)  # opaque blue stays blue
    return Image.fromarray(pixels, "RGBA")


def rgba_expected() -> np.ndarray:
    out = np.empty((S, S, 3))
    out[0], out[1], out[2:] = (255, 127, 127), (255, 255, 255), (0, 0, 255)
    return out


def la_image() -> Image.Image:
    pixels = np.zeros((S, S, 2), dtype=np.uint8)
    pixels[0], pixels[1], pixels[2:] = (0, 0), (0, 255), (100, 128)
    return Image.fromarray(pixels, "LA")


def la_expected() -> np.ndarray:
    out = np.empty((S, S))
    out[0], out[1], out[2:] = 255, 0, round(100 * 128 / 255 + 255 * 127 / 255)
    return grey(out)


def checkerboard() -> np.ndarray:
    return np.indices((S, S)).sum(axis=0) % 2 == 1


# (file name, image, expected RGB pixels 0..255, tolerance)
CASES: list[tuple[str, Callable[[], Image.Image], Callable[[], np.ndarray], float]] = [
    (
        "i16.png",
        lambda: Image.fromarray(GRADIENT16.astype(np.uint16)),
        lambda: grey(np.round(GRADIENT16 / 257)),
        0,
    ),
    (
        "i32_small.tif",
        lambda: Image.fromarray(GRADIENT16.astype(np.int32)),
        lambda: grey(np.round(GRADIENT16 / 257)),
        0,
    ),
    (
        "i32_large.tif",
        lambda: Image.fromarray((GRADIENT16 * 32768).astype(np.int32)),
        lambda: grey(np.round(GRADIENT16 * 32768 / (2**31 - 1) * 255)),
        0,
    ),
    (
        "f_unit.tif",
        lambda: Image.fromarray((GRADIENT16 / 65535).astype(np.float32)),
        lambda: grey(np.round(GRADIENT16 / 65535 * 255)),
        0,
    ),
    (
        "f_large.tif",
        lambda: Image.fromarray((GRADIENT16 / 65535 * 4).astype(np.float32)),
        lambda: grey(np.round(GRADIENT16 / 65535 * 255)),
        0,
    ),
    ("rgba.png", rgba_image, rgba_expected, 0),
    ("la.png", la_image, la_expected, 0),
    ("p_transparent.png", lambda: palette_image(True), lambda: p_expected(True), 0),
    ("p_plain.png", lambda: palette_image(False), lambda: p_expected(False), 0),
    (
        "pa.tif",
        lambda: palette_image(False).convert("PA"),
        lambda: p_expected(False),
        0,
    ),
    (
        "one_bit.png",
        lambda: Image.fromarray(checkerboard()).convert("1"),
        lambda: grey(checkerboard() * 255),
        0,
    ),
    ("cmyk.tif", lambda: Image.new("CMYK", (S, S), (255, 0, 0, 0)), lambda: rgb(0, 255, 255), 0),
    ("cmyk.jpg", lambda: Image.new("CMYK", (S, S), (255, 0, 0, 0)), lambda: rgb(0, 255, 255), 3),
    (
        "ycbcr.tif",
        lambda: Image.new("RGB", (S, S), (200, 30, 60)).convert("YCbCr"),
        lambda: rgb(200, 30, 60),
        3,
    ),
]


def p_expected(transparent: bool) -> np.ndarray:
    first = (255, 255, 255) if transparent else (255, 0, 0)
    mask = checkerboard()[..., None]
    return np.where(mask, np.asarray((0, 128, 0), float), np.asarray(first, float))


def write_modes(root: Path) -> list[str]:
    folder = root / "modes"
    folder.mkdir(parents=True)
    for name, make, _, _ in CASES:
        make().save(folder / name)
    return sorted(name for name, *_ in CASES)


def test_every_mode_is_converted_by_its_depth_and_on_white(tmp_path: Path) -> None:
    names = write_modes(tmp_path)
    ds = get_dataset(f"imagefolder:{tmp_path}", protocol="unlabeled", image_size=S)
    assert [p.name for p in ds.base.paths] == names
    cases = {name: (expected, tol) for name, _, expected, tol in CASES}
    for i, name in enumerate(names):
        image = ds[i][0]
        assert image.shape == (3, S, S)
        got = image.permute(1, 2, 0).numpy() * 255
        expected, tol = cases[name]
        assert np.abs(got - expected()).max() <= tol + 1e-3, (name, got[..., 0], expected()[..., 0])


def test_sixteen_bit_gradient_keeps_its_gradient(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(GRADIENT16.astype(np.uint16)).save(tmp_path / "c" / "g.png")
    one = get_dataset(f"imagefolder:{tmp_path}", protocol="unlabeled", image_size=S, channels=1)
    values = one[0][0].flatten()
    assert one.image_shape == (1, S, S)
    assert bool((values[1:] > values[:-1]).all()) and float(values[-1]) == 1.0
    assert float((values == 1.0).float().mean()) < 0.1  # not clipped white, as convert("L") did


def test_colour_to_grey_uses_luma_and_grey_to_colour_repeats() -> None:
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    assert convert_image(red, channels=1).getpixel((0, 0)) == 76  # ITU-R 601-2: 0.299 * 255
    assert convert_image(Image.new("L", (2, 2), 9), channels=3).getpixel((0, 0)) == (9, 9, 9)
    premultiplied = Image.new("RGBA", (2, 2), (255, 0, 0, 0)).convert("RGBa")
    assert convert_image(premultiplied, channels=3).getpixel((0, 0)) == (255, 255, 255)


# ---------------------------------------------------------------------------------- corrupt files


def write_with_corrupt(root: Path) -> tuple[Path, Path]:
    """Three good images in ``root/c/`` plus a truncated PNG and a garbage 'JPEG'."""
    folder = root / "c"
    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for k in range(3):
        Image.fromarray(noise).save(folder / f"good{k}.png")
    data = (folder / "good0.png").read_bytes()
    truncated, garbage = folder / "half.png", folder / "junk.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"this is not an image at all")
    return truncated, garbage


def test_corrupt_file_raises_one_line_user_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    bad = write_with_corrupt(tmp_path)
    ds = get_dataset(f"imagefolder:{tmp_path}", protocol="unlabeled", image_size=8)
    assert len(ds) == 5
    for i, path in enumerate(ds.base.paths):
        if path not in bad:
            continue
        with pytest.raises(CorruptImageError) as err:
            ds[i]
        message = str(err.value)
        assert isinstance(err.value, UserError) and "\n" not in message
        assert str(path) in message and "delete or replace" in message
        assert "skip_corrupt=True" in message


def test_skip_corrupt_leaves_unreadable_files_out_with_one_warning(tmp_path: Path) -> None:
    write_with_corrupt(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = get_dataset(
            f"imagefolder:{tmp_path}", protocol="unlabeled", image_size=8, skip_corrupt=True
        )
    assert [p.name for p in ds.base.paths] == ["good0.png", "good1.png", "good2.png"]
    assert len(ds) == 3 and ds.get_batch([0, 1, 2]).shape == (3, 3, 8, 8)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "left out 2 unreadable image(s) of 5" in messages[0]
    with pytest.warns(UserWarning, match="left out 2"):
        sup = get_dataset(f"imagefolder:{tmp_path}", protocol="supervised", skip_corrupt=True)
    assert sup.base.targets == [0, 0, 0]  # indices stay consistent: every split is of the 3


def test_skip_corrupt_in_a_downstream_set(tmp_path: Path) -> None:
    fake = fake_pets(tmp_path)
    victim = tmp_path / "oxford-iiit-pet" / "images" / "Abyssinian_test0.jpg"
    victim.write_bytes(b"\xff\xd8 broken")
    every = get_dataset("pets", fake.root, "test", "supervised", image_size=8)
    with pytest.raises(CorruptImageError, match="Abyssinian_test0.jpg"):
        every.get_batch(range(len(every)))
    with pytest.warns(UserWarning, match="left out 1 unreadable"):
        test = get_dataset("pets", fake.root, "test", "supervised", image_size=8, skip_corrupt=True)
    assert len(test) == len(every) - 1
    assert test.get_batch(range(len(test))).shape == (len(test), 3, 8, 8)
