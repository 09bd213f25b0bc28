"""Batched photometric ops of the SSL views: per-image brightness, contrast, saturation, hue,
grayscale and Gaussian blur on ``[m, C, H, W]`` tensors, matching torchvision's per-image
definitions (``torchvision.transforms.v2.functional``) to float rounding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: torchvision's luma weights (ITU-R 601-2)
LUMA = (0.2989, 0.587, 0.114)


def rgb_luma(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[m, 1, H, W]`` of RGB images ``[m, 3, H, W]`` (torchvision's weights and order)."""
    r, g, b = x.unbind(1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


# The colour ops below work in place on views the caller owns: fresh large tensors cost page
# faults on the CPU, which dominate these memory-bound passes. ``f`` is per image, [m, 1, 1, 1].


def brightness_(x: torch.Tensor, f: torch.Tensor) -> None:
    """``x ← clamp(f·x, 0, 1)``."""
    x.mul_(f).clamp_(0.0, 1.0)


def blend_(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> None:
    """``x ← clamp(f·x + (1 − f)·other, 0, 1)``."""
    x.mul_(f).add_(other.mul(1 - f)).clamp_(0.0, 1.0)


def contrast_(x: torch.Tensor, f: torch.Tensor) -> None:
    """Blend towards the image's mean luma (its mean value for 1-channel images)."""
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
        mean = (x.mean(dim=(2, 3)) @ weights).view(-1, 1, 1, 1)  # mean of luma, one pass
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
    blend_(x, mean, f)


def saturation_(x: torch.Tensor, f: torch.Tensor) -> None:
    """Blend towards each pixel's luma."""
    blend_(x, rgb_luma(x), f)


def hue_(x: torch.Tensor, f: torch.Tensor) -> None:
    """Rotate the HSV hue by ``f`` turns, keeping value (max) and saturation (range / max).

    Hue in sixths: ``h = (g − b)/d`` if max = r, else ``2 + (b − r)/d`` if max = g, else
    ``4 + (r − g)/d`` (``d`` = max − min; torchvision's precedence on ties), so ``h ∈ [−1, 5]``
    and the rotated ``h' = h + 6f ∈ [−4, 8]``. Back to RGB in closed form: channel ``k`` is
    ``min + d·clamp(2 − δ_k, 0, 1)`` with ``δ_k`` the circular distance (period 6) from ``h'``
    to the channel's own hue ``2k``; for ``a = |h' − 2k| ≤ 12``, ``δ_k = 3 − ||a − 6| − 3|``, so
    no wrap-around (``floor``/``fmod``, slow here) is needed. Masks are built by arithmetic
    (``1 + sign(c − max)`` is 1 exactly where ``c`` is the max): boolean ops are slower too.
    """
    r, g, b = x.unbind(1)
    high, low = x.amax(1), x.amin(1)
    is_r = torch.sub(r, high).sign_().add_(1)
    is_g = torch.sub(g, high).sign_().add_(1).mul_(1 - is_r)
    d = high.sub_(low)
    # h·d = blue's case, plus is_r·(red's − blue's) + is_g·(green's − blue's).
    h = torch.sub(r, g).add_(d, alpha=4)
    red, green = torch.sub(g, b).sub_(h), torch.sub(b, r).add_(d, alpha=2).sub_(h)
    h.addcmul_(red, is_r).addcmul_(green, is_g)
    # Gray pixels (d = 0) get h = 0/tiny = 0 and come back as min = max, whatever their hue.
    h.div_(torch.clamp_min(d, torch.finfo(d.dtype).tiny)).add_(6 * f.view(-1, 1, 1))
    centres = torch.tensor((0.0, 2.0, 4.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    torch.sub(h.unsqueeze(1), centres, out=x)  # r, g, b are no longer needed
    x.abs_().sub_(6).abs_().sub_(3).abs_().sub_(1).clamp_(0.0, 1.0)  # clamp(2 − δ, 0, 1)
    x.mul_(d.unsqueeze(1)).add_(low.unsqueeze(1))


JITTER_OPS: tuple[Callable[[torch.Tensor, torch.Tensor], None], ...] = (
    brightness_,
    contrast_,
    saturation_,
    hue_,
)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with per-image ``sigma [m]`` and reflect padding (GaussianBlur's).

    Weights ``∝ exp(−i²/(2σ²))`` for ``i = −k//2 .. k//2``, normalised; one depthwise convolution
    per axis with a group per (image, channel). Channels-last layout, where oneDNN's depthwise
    kernels vectorise across the groups (about 1.6× faster on the CPU than contiguous).
    """
    m, c, height, width = x.shape
    half = kernel // 2
    pos = torch.arange(-half, half + 1, dtype=torch.float64)
    weights = torch.softmax(-(pos / sigma.view(-1, 1)).pow(2) / 2, dim=1)  # [m, k]
    weights = weights.to(x.device, x.dtype).repeat_interleave(c, dim=0)  # [m·c, k]
    y = x.reshape(1, m * c, height, width).contiguous(memory_format=torch.channels_last)
    y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, weights.view(m * c, 1, 1, kernel), groups=m * c)
    y = F.conv2d(y, weights.view(m * c, 1, kernel, 1), groups=m * c)
    return y.view(m, c, height, width)
