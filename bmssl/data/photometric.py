"""Batched photometric ops of the SSL views on ``[m, C, H, W]`` tensors, per-image parameters,
matching torchvision's per-image definitions (``torchvision.transforms.v2.functional``) to float
rounding: the colour-jitter blends, hue rotation and grayscale, and the pieces of separable
filters (Gaussian taps, reflect padding, weighted bags of rows) that the blur and the resize use.

The colour ops are pointwise, so the views may hold their images transposed (``[m, C, W, H]``)
while they run; they work in place on tensors the caller owns (on the CPU, blocks of images
that stay in cache). Per-image factors come as ``[m, 1, 1, 1]`` tensors. On contiguous float32
CPU blocks the hue and the scale-and-shift run as fused kernels
(:mod:`bmssl.data.colour_kernels`, the same arithmetic in one pass); elsewhere as the torch ops
below, which are also those kernels' reference.
"""

from __future__ import annotations

import functools

import torch

from bmssl.data import colour_kernels

#: torchvision's luma weights (ITU-R 601-2)
LUMA = (0.2989, 0.587, 0.114)


def rgb_luma(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[m, 1, H, W]`` of RGB images ``[m, 3, H, W]`` (torchvision's weights and order)."""
    r, g, b = x.split(1, 1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def scale_shift_(x: torch.Tensor, f: torch.Tensor, shift: torch.Tensor | None) -> None:
    """``x ← clamp(f·x + shift, 0, 1)``: brightness (``shift = 0``) and contrast
    (``shift = (1 − f)·mean luma``) blends, each image its own ``f`` and ``shift``."""
    if x.numel() >= colour_kernels.SCALE_SHIFT_MIN_NUMEL and colour_kernels.usable(x):
        colour_kernels.scale_shift_(x, f, shift)
        return
    x.mul_(f)
    if shift is not None:
        x.add_(shift)
    x.clamp_(0.0, 1.0)


def saturation_(x: torch.Tensor, f: torch.Tensor) -> None:
    """``x ← clamp(f·x + (1 − f)·luma(x), 0, 1)`` (RGB)."""
    torch.lerp(rgb_luma(x), x, f, out=x)
    x.clamp_(0.0, 1.0)


def grayscale_(x: torch.Tensor) -> None:
    """Every channel of RGB images ``x`` set to their luma."""
    x.copy_(rgb_luma(x))


def hue_offsets(turns: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel coefficients ``[m, 3]`` of :func:`hue_` for hue shifts ``turns``:
    ``6·turns − 2k + 6·⌈(1 + 2k − 6·turns)/6⌉ − 6`` for channel ``k``."""
    shift = 6 * turns.double().view(-1, 1) - 2 * torch.arange(3, dtype=torch.float64)
    return shift + 6 * torch.ceil((1 - shift) / 6) - 6


def hue_(x: torch.Tensor, offsets: torch.Tensor) -> None:
    """Rotate the HSV hue of RGB images ``x`` in place; ``offsets [m, 3, 1, 1]`` from
    :func:`hue_offsets`.

    With ``M``, ``m``, ``d = M − m`` a pixel's max, min and range, ``D = d·h`` for its hue
    ``h ∈ [−1, 5]`` in sixths is ``g − b`` (r max), ``2d + b − r`` (g max), ``4d + r − g``
    (b max; torchvision's precedence on ties); with ``n_c = [c < M] ∈ {0, 1}`` that is
    ``D = (g − b) − n_r·((r + g − 2b − 2d) + n_g·(g + b − 2r − 2d))`` (one comparison per
    indicator, written straight into a float tensor). The rotated channel
    ``k`` is ``m + d·clamp(2 − δ, 0, 1)``, ``δ`` the distance to 6ℤ of ``u = h + 6·turns − 2k``
    moved by whole turns into ``[0, 12]``, where ``δ = 3 − ||u − 6| − 3|``. Times ``d``, with
    ``Y_k = D + offsets_k·d = d·(u − 6)``: channel ``k = clamp(m − d + ||Y_k| − 3d|, m, M)``.
    No division: gray pixels (``d = 0``) come back exactly.
    """
    if colour_kernels.usable(x):
        colour_kernels.hue_(x, offsets)
        return
    r, g, b = x.split(1, 1)
    high = torch.maximum(r, g)
    high = torch.maximum(high, b, out=high)
    low = torch.minimum(r, g)
    low = torch.minimum(low, b, out=low)
    d = high - low
    n_r = torch.lt(r, high, out=torch.empty_like(d))
    n_g = torch.lt(g, high, out=torch.empty_like(d))
    q = torch.add(r, g).add_(b).sub_(d, alpha=2.0)  # r + g + b − 2d
    rg = torch.sub(q, b, alpha=3.0)
    gb = q.sub_(r, alpha=3.0)
    hue = torch.sub(g, b).addcmul_(n_r, rg.addcmul_(n_g, gb), value=-1.0)
    # r, g and b have been read: x now takes Y_0, Y_1, Y_2.
    for channel, offset in zip((r, g, b), offsets.split(1, 1)):
        torch.addcmul(hue, d, offset, out=channel)
    x.abs_().sub_(d, alpha=3.0).abs_()
    x.add_(low - d).clamp_(min=low, max=high)


def gaussian_weights(sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian taps ``[m, kernel]`` ``∝ exp(−i²/(2σ²))``, ``i = −k//2 .. k//2``, normalised."""
    half = kernel // 2
    pos = torch.arange(-half, half + 1, dtype=torch.float64, device=sigma.device)
    return torch.softmax(-(pos / sigma.double().view(-1, 1)).pow(2) / 2, dim=1)


@functools.lru_cache(maxsize=32)
def reflect_taps(size: int, kernel: int) -> torch.Tensor:
    """Source indices ``[size, kernel]`` of a ``kernel``-tap filter along an axis of ``size`` with
    reflect padding (``−i → i``, ``size − 1 + i → size − 1 − i``), as ``F.pad(mode="reflect")``."""
    half = kernel // 2
    if size <= half:
        raise ValueError(f"a blur of {kernel} taps needs images larger than {half} px")
    idx = torch.arange(size).view(-1, 1) + torch.arange(-half, half + 1)
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)


def bag_rows(
    table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Weighted sums of rows: ``out[r] = Σ_j weight[r·k + j] · table[index[r·k + j]]`` for
    ``table [R, B]``, ``k`` taps per output row and ``offsets = (0, k, 2k, …)``, one per row.

    One ``embedding_bag`` call: a filter along the outer axis of images reads them in
    contiguous rows (a gather along the last axis would not).
    """
    return torch.embedding_bag(table, index, offsets, False, 0, False, weight)[0]


def transposed(x: torch.Tensor) -> torch.Tensor:
    """``x [m, C, A, B]`` as a contiguous ``[m, C, B, A]``."""
    return x.transpose(2, 3).contiguous()
