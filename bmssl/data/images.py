"""Decoding an image file of any PIL mode into the 8-bit ``L`` or ``RGB`` image a dataset yields.

:func:`convert_image` is the one conversion every PIL-backed dataset uses:

- 16-bit integer images (``I;16``, ``I;16B``, ...) are scaled by their bit depth, value / 257
  (0..65535 -> 0..255), not clipped at 255 as ``Image.convert`` does.
- 32-bit integer images (``I``) hold 16-bit samples in practice (Pillow's own container for
  them), so one whose values stay within 0..65535 is scaled as 16-bit; one with larger values is
  scaled by the 32-bit signed range (value / 8,421,504.5). Negative values become 0.
- Float images (``F``) whose values lie in [0, 1] are taken as intensities in [0, 1] (negatives
  clipped to 0); one with a maximum above 1 is divided by that maximum.
- Transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, and ``P``, ``L`` or ``RGB`` with a
  transparent colour) is composited on a WHITE background, so a transparent pixel is white and a
  half-transparent red one pink, not black or dark red.
- Palette (``P``), 1-bit (``1``), ``CMYK``, ``YCbCr`` and other modes go through Pillow's own
  conversion to ``RGB`` (pure cyan CMYK (255, 0, 0, 0) becomes RGB (0, 255, 255)).

Then a grey image becomes ``RGB`` by repeating its grey, and a colour image becomes ``L`` by the
ITU-R 601-2 luma transform, as ``channels`` asks. A file that cannot be decoded raises
:class:`CorruptImageError`, whose message names the file and the fix.

A file whose header declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression
bomb: a few kilobytes that would decode to gigabytes) is refused before it is decoded, as a
:class:`CorruptImageError` like any other undecodable file, so ``skip_corrupt`` (``--skip-corrupt``
on the command line, :data:`SKIP_CORRUPT_ENV` in the environment) leaves it out too. Pillow's own
warning for such files is silenced, since the harness refuses them itself.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
from PIL import Image

from bmssl.errors import UserError, one_line

SKIP_OPTION = "skip_corrupt=True"
#: the command-line switch of every verb that reads images (bmssl.cli)
SKIP_FLAG = "--skip-corrupt"
#: set (to 1) by ``--skip-corrupt``; the local-root loaders then skip unreadable images
SKIP_CORRUPT_ENV = "BMSSL_SKIP_CORRUPT"
# Pillow raises OSError (UnidentifiedImageError, "image file is truncated"), SyntaxError ("broken
# PNG file") or EOFError for undecodable data, depending on the format; hostile headers also
# reach ValueError, struct.error, ... in its decoders (see PILImageDataset.load_image).
DECODE_ERRORS = (OSError, SyntaxError, EOFError, Image.DecompressionBombError)

# Refused by bomb_check (before decoding) whatever the size, so Pillow's warning between one and
# two times the limit would only add a second, multi-line message. Pillow's other warnings
# ("Corrupt EXIF data", "Tag data larger than file") are about metadata it then ignores; a
# file it cannot decode is one CorruptImageError line, never a warning plus a line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
INT16_FULL = 65535
INT32_FULL = 2**31 - 1


class CorruptImageError(UserError):
    """An image file (or table row) that cannot be decoded."""

    def __init__(self, where: str, err: BaseException | str) -> None:
        reason = one_line(str(err), 200) or type(err).__name__
        super().__init__(
            f"cannot decode image {where} ({reason}): delete or replace the file, or pass "
            f"{SKIP_OPTION} ({SKIP_FLAG}) to leave unreadable images out"
        )
        self.where = where
        self.reason = reason

    def __reduce__(self) -> tuple:
        # The two-argument constructor breaks the default exception pickling (worker processes
        # and Ray send errors between processes).
        return (type(self), (self.where, self.reason))


def skip_corrupt_requested() -> bool:
    """Whether ``--skip-corrupt`` (:data:`SKIP_CORRUPT_ENV`) asks to leave unreadable images out."""
    return os.environ.get(SKIP_CORRUPT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def bomb_reason(err: BaseException) -> str:
    """The reason of a CorruptImageError for Pillow's own DecompressionBombError."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{found.group(1)} pixels" if found else "more pixels than twice that"
    return (
        f"it declares {pixels}, more than Pillow's decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS}"
    )


def bomb_check(img: Image.Image, where: str) -> None:
    """Refuse an image whose header declares more pixels than Pillow's bomb limit, before any
    pixel is decoded (:class:`CorruptImageError` naming the file and the declared size)."""
    width, height = img.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise CorruptImageError(
            where,
            f"it declares {width}x{height} = {width * height} pixels, more than Pillow's "
            f"decompression-bomb limit of {limit}",
        )


def convert_image(img: Image.Image, channels: int, where: str = "image") -> Image.Image:
    """``img`` as an 8-bit ``L`` (``channels=1``) or ``RGB`` (``channels=3``) image.

    See the module docstring for the rules (high bit depths scaled, transparency on white).
    """
    img = _to_8bit(img, where)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _to_8bit(img: Image.Image, where: str) -> Image.Image:
    """``img`` as an 8-bit ``L`` or ``RGB`` image, whatever its mode."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" not in img.info:
        return img
    if mode.startswith("I"):
        return _integer_to_l(img)
    if mode == "F":
        return _float_to_l(img)
    if mode in ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)
    if mode == "1":
        return img.convert("L")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise UserError(
            f"{where} has image mode {mode!r}, which Pillow cannot convert to RGB ({err}); "
            "save it as an RGB or greyscale image"
        ) from None


def _integer_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img).astype(np.float64)
    full = INT16_FULL
    if not img.mode.startswith("I;16") and values.size and values.max() > INT16_FULL:
        full = INT32_FULL
    return _grey(np.clip(values, 0, full) * (255.0 / full))


def _float_to_l(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    return _grey(np.clip(values / max(top, 1.0), 0.0, 1.0) * 255.0)


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(values).astype(np.uint8), "L")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite on white: ``value · alpha + 255 · (1 - alpha)``, grey kept grey."""
    grey = img.mode in ("LA", "La") or (img.mode == "L" and "transparency" in img.info)
    pixels = np.asarray(img.convert("LA" if grey else "RGBA"), dtype=np.float64)
    alpha = pixels[..., -1:] / 255.0
    out = np.round(pixels[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(out[..., 0], "L") if grey else Image.fromarray(out, "RGB")
