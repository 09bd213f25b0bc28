"""Batched SSL views: ours (:class:`bmssl.data.SSLViews`) against kornia.augmentation with the
same recipe, on a batch of images on the same device.

Recipes (``bmssl/data/views.py``'s levels):

- 28-px 1-channel ``affine``: rotation ±15°, shift ±15%, zoom 0.8–1.2, x-shear ±10°, nearest
  neighbour with zero fill; colour jitter (brightness and contrast 0.4) with probability 0.8;
- 84-px RGB ``strong``: resized crop (area 0.08–1), horizontal flip, colour jitter (0.8, 0.8, 0.8,
  hue 0.2) with probability 0.8, grayscale 0.2, Gaussian blur (kernel 9, σ 0.1–2) with
  probability 0.5.

kornia draws its own parameters from torch's global RNG; ours from a CPU generator. Both make
one view of every image per call; the images are uniform noise (the ops' cost does not depend
on the pixels).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from benchmarks.peers import measure
from bmssl.data import SSLViews
from bmssl.data.views import _LEVELS, BLUR_SIGMA, blur_kernel_size

CASES = (("affine", 28, 1), ("strong", 84, 3))


def kornia_pipeline(strength: str, size: int, channels: int) -> torch.nn.Module:
    """kornia.augmentation's version of one of our levels (see the module docstring)."""
    import kornia.augmentation as K

    level = _LEVELS[strength]
    ops: list[torch.nn.Module] = []
    if level.affine is not None:
        degrees, shift, zoom, shear = level.affine
        ops.append(
            K.RandomAffine(
                degrees,
                (shift, shift),
                zoom,
                shear,
                resample="nearest",
                padding_mode="zeros",
                p=1.0,
            )
        )
    if level.crop_scale is not None:
        ops.append(K.RandomResizedCrop((size, size), scale=level.crop_scale, p=1.0))
    if level.flip:
        ops.append(K.RandomHorizontalFlip())
    j = level.jitter
    sat, hue = (j, min(0.5, j / 4)) if channels == 3 else (0.0, 0.0)
    ops.append(K.ColorJitter(j, j, sat, hue, p=level.jitter_p))
    if channels == 3 and level.gray_p > 0:
        ops.append(K.RandomGrayscale(p=level.gray_p))
    if level.blur_p > 0:
        kernel = blur_kernel_size(size)
        ops.append(K.RandomGaussianBlur((kernel, kernel), BLUR_SIGMA, p=level.blur_p))
    return K.AugmentationSequential(*ops)


def run(args: Any, device: torch.device) -> list[dict[str, Any]]:
    """One row per recipe: times of both sides, ratio kornia / ours, peak memory of each."""
    version, why = measure.peer_version("kornia")
    rows = []
    for strength, size, channels in CASES:
        noise = torch.Generator().manual_seed(args.seed)
        batch = torch.rand(args.view_batch, channels, size, size, generator=noise).to(device)
        ours = functools.partial(
            SSLViews(strength, size, channels), batch, torch.Generator().manual_seed(args.seed)
        )
        row: dict[str, Any] = {"path": "views", "case": f"{size}px {channels}ch {strength}"}
        fns: dict[str, measure.Fn] = {"ours": ours}
        if version is None:
            row["skipped"] = {"kornia": why}
        else:
            pipe = kornia_pipeline(strength, size, channels).to(device)
            fns["kornia"] = functools.partial(torch.no_grad()(pipe), batch)
            row["versions"] = {"kornia": version}
        row.update(side_by_side(fns, args, device))
        rows.append(row)
    return rows


def side_by_side(fns: dict[str, measure.Fn], args: Any, device: Any) -> dict[str, Any]:
    """Times, per-round ratios against ``ours`` and peak memory of every side."""
    times = measure.interleaved(fns, args.repeats, args.clock, device)
    out: dict[str, Any] = {"times_s": times, "ratios": {}, "peak_mb": {}}
    for name, fn in fns.items():
        out["peak_mb"][name] = measure.peak_mb(fn, device)
        if name != "ours":
            out["ratios"][name] = measure.ratio_stats(times[name], times["ours"])
    return out
