"""Fused CPU kernels (numba) of the colour ops of :mod:`bmssl.data.photometric`.

The torch formulas in ``photometric`` take one pass over the block per elementary op (the hue
about thirty); each kernel here takes one pass per image, reading the pixels once and keeping
every intermediate in registers, with the same arithmetic in strict IEEE float32 (no fast-math:
no reassociation, no fused multiply-add), so the two agree to float rounding (the tests check
them against each other). The loops vectorise: each image's results go to a scratch buffer that
cannot alias its input, then are copied back while the image is still in cache.

Why numba and not ``torch.compile``: on the 2-core development box a compiled hue took ~14 s to
compile, and with its per-call overhead (guards) the batch of 256 84-px views gained 10%, where
these kernels gain 20% (``benchmarks/bench_views.py``); they compile in a few seconds once, are
cached on disk, and cost microseconds a call. Only the hue and the scale-and-shift are here:
fused saturation and grayscale kernels were no faster than the torch ops. Used for contiguous
float32 CPU tensors; other devices and dtypes keep the torch ops.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch

_ONE, _TWO, _THREE = np.float32(1.0), np.float32(2.0), np.float32(3.0)
_ZERO = np.float32(0.0)


def _jit(fn: Callable[..., None]) -> Callable[..., None]:
    """``numba.njit`` in strict IEEE arithmetic, cached on disk where numba finds a writable
    place (beside this file or the user's cache folder), else compiled once per process."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath=False)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, fastmath=False)(fn)


#: Fewer elements than this and the scale-and-shift stays with torch: its three passes over a
#: small block (28-px gray views) cost less than a kernel call's argument conversions.
SCALE_SHIFT_MIN_NUMEL = 1 << 16


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``: a contiguous float32 CPU tensor outside autograd."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous()
        and not x.requires_grad
    )


@_jit
def _hue(x: np.ndarray, offsets: np.ndarray) -> None:  # pragma: no cover - compiled
    m, n = x.shape[0], x.shape[2]
    out = np.empty((3, n), dtype=np.float32)
    for i in range(m):
        r_in, g_in, b_in = x[i, 0], x[i, 1], x[i, 2]
        o0, o1, o2 = offsets[i, 0], offsets[i, 1], offsets[i, 2]
        r_out, g_out, b_out = out[0], out[1], out[2]
        for j in range(n):
            r, g, b = r_in[j], g_in[j], b_in[j]
            high = max(max(r, g), b)
            low = min(min(r, g), b)
            d = high - low
            n_r = _ONE if r < high else _ZERO
            n_g = _ONE if g < high else _ZERO
            q = r + g + b - _TWO * d
            hue = (g - b) - n_r * ((q - _THREE * b) + n_g * (q - _THREE * r))
            base, d3 = low - d, _THREE * d
            r_out[j] = min(max(abs(abs(hue + o0 * d) - d3) + base, low), high)
            g_out[j] = min(max(abs(abs(hue + o1 * d) - d3) + base, low), high)
            b_out[j] = min(max(abs(abs(hue + o2 * d) - d3) + base, low), high)
        x[i] = out


@_jit
def _scale_shift(x: np.ndarray, factor: np.ndarray, shift: np.ndarray) -> None:  # pragma: no cover
    for i in range(x.shape[0]):
        f, s, row = factor[i], shift[i], x[i]
        for j in range(row.shape[0]):
            row[j] = min(max(row[j] * f + s, _ZERO), _ONE)


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1).numpy()


def _per_image(t: torch.Tensor, m: int) -> np.ndarray:
    """``[m, 1, 1, 1]`` (or ``[m]``) per-image factors as a float32 array ``[m]``."""
    return t.reshape(m).to(torch.float32).contiguous().numpy()


def hue_(x: torch.Tensor, offsets: torch.Tensor) -> None:
    """:func:`photometric.hue_` in one pass per image; ``offsets [m, 3, 1, 1]``."""
    if len(x):
        _hue(_flat(x), offsets.reshape(len(x), 3).to(torch.float32).contiguous().numpy())


def scale_shift_(x: torch.Tensor, f: torch.Tensor, shift: torch.Tensor | None) -> None:
    """:func:`photometric.scale_shift_` in one pass; ``f``, ``shift`` ``[m, 1, 1, 1]``."""
    m = len(x)
    if m:
        s = _per_image(shift, m) if shift is not None else np.zeros(m, dtype=np.float32)
        _scale_shift(x.reshape(m, -1).numpy(), _per_image(f, m), s)
