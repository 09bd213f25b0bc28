"""Offline datasets that need no download: scikit-learn digits and procedural glyphs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bmssl.data.base import ImageDataset, SubsetByClass, TensorImageDataset
from bmssl.data.registry import register_dataset
from bmssl.data.splitting import item_split_mask, split_dataset
from bmssl.errors import UserError

# Digits has 10 classes only: few-shot training on 0-4; 5-9 held out, their images halved
# (even positions -> val, odd -> test) so that both held-out splits allow 5-way episodes.
DIGITS_TRAIN_CLASSES = (0, 1, 2, 3, 4)
DIGITS_HELDOUT_CLASSES = (5, 6, 7, 8, 9)


@lru_cache(maxsize=4)
def _digits_full(image_size: int) -> TensorImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(
        1
    )  # [1797, 1, 8, 8]
    images = F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, bunch.target.tolist(), [str(c) for c in range(10)])


@register_dataset("digits", "scikit-learn's digits ship with scikit-learn; nothing to download.")
def digits(
    root: Path | None, split: str, protocol: str, image_size: int = 28, **_: Any
) -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits (8×8, upsampled to ``image_size``), 1 channel.

    ``supervised`` divides each class's images 70/10/20; ``unlabeled`` pools all 1,797.
    """
    full = _digits_full(image_size)
    if protocol != "fewshot":
        return split_dataset(full, split, protocol)
    if split == "train":
        return SubsetByClass(full, list(DIGITS_TRAIN_CLASSES))
    targets = np.asarray(full.targets)
    position = np.zeros(len(targets), dtype=np.int64)
    for c in DIGITS_HELDOUT_CLASSES:
        idx = np.nonzero(targets == c)[0]
        position[idx] = np.arange(len(idx))
    mask = (position % 2 == 0) if split == "val" else (position % 2 == 1)
    return SubsetByClass(full, list(DIGITS_HELDOUT_CLASSES), item_mask=mask)


def _bezier(control: np.ndarray, samples: int) -> np.ndarray:
    """Points on quadratic Bézier curves: ``control [..., 3, 2] -> [..., samples, 2]``."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    p0, p1, p2 = control[..., 0:1, :], control[..., 1:2, :], control[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _render_strokes(
    points: np.ndarray, width: np.ndarray, size: int, supersample: int = 4
) -> np.ndarray:
    """Rasterise polylines: ``points [M, S, P, 2]`` in [0,1]², ``width [M]`` -> ``uint8 [M, size, size]``.

    Lines are drawn with PIL at ``supersample``× resolution and box-filtered down (anti-aliasing).
    """
    from PIL import Image, ImageDraw

    big = size * supersample
    out = np.empty((points.shape[0], size, size), dtype=np.uint8)
    for m in range(points.shape[0]):
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        pen = max(1, int(round(2 * width[m] * big)))
        for stroke in points[m] * big:
            xy = [tuple(p) for p in stroke.tolist()]
            draw.line(xy, fill=255, width=pen, joint="curve")
            r = pen / 2
            for x, y in (xy[0], xy[-1]):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        out[m] = np.asarray(canvas.resize((size, size), Image.Resampling.BOX))
    return out


def generate_glyphs(
    num_classes: int = 600, per_class: int = 20, image_size: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded procedural handwriting-like set: ``uint8 [num_classes·per_class, 1, H, W]`` and labels.

    A class is 2–4 quadratic strokes; each image redraws them with jittered control points, a small
    random rotation/scale/shift and its own pen width. Same arguments give the same bytes.
    """
    if num_classes < 1 or per_class < 1:
        raise UserError(
            f"glyphs needs num_classes >= 1 and per_class >= 1, got {num_classes}, {per_class}"
        )
    rng = np.random.default_rng(seed)
    images = np.empty((num_classes, per_class, image_size, image_size), dtype=np.uint8)
    max_strokes, samples = 4, 12
    for c in range(num_classes):
        n_strokes = int(rng.integers(2, max_strokes + 1))
        control = rng.uniform(0.18, 0.82, size=(n_strokes, 3, 2))
        jitter = rng.normal(0.0, 0.025, size=(per_class, n_strokes, 3, 2))
        angle = rng.normal(0.0, 0.15, size=per_class)
        scale = rng.uniform(0.85, 1.1, size=per_class)
        shift = rng.normal(0.0, 0.04, size=(per_class, 1, 1, 2))
        width = rng.uniform(0.025, 0.045, size=per_class)
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [M, 2, 2]
        ctrl = control[None] + jitter - 0.5
        ctrl = np.einsum("mij,msnj->msni", rot, ctrl) + 0.5 + shift
        pts = _bezier(ctrl, samples)  # [M, S, P, 2]
        images[c] = _render_strokes(pts, width, image_size)
    labels = np.repeat(np.arange(num_classes), per_class)
    return images.reshape(-1, 1, image_size, image_size), labels


@lru_cache(maxsize=4)
def _glyphs_full(
    num_classes: int, per_class: int, image_size: int, seed: int
) -> TensorImageDataset:
    images, labels = generate_glyphs(num_classes, per_class, image_size, seed)
    return TensorImageDataset(
        torch.from_numpy(images), labels.tolist(), [f"glyph{c:04d}" for c in range(num_classes)]
    )


@register_dataset("glyphs", "glyphs are generated procedurally; nothing to download.")
def glyphs(
    root: Path | None,
    split: str,
    protocol: str,
    num_classes: int = 600,
    per_class: int = 20,
    image_size: int = 28,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """Procedural glyphs: 600 classes × 20 images by default; few-shot split 384/96/120 classes.

    ``supervised`` divides each class's images with ``seed``; ``unlabeled`` pools every image.
    """
    full = _glyphs_full(num_classes, per_class, image_size, seed)
    if protocol == "supervised":
        mask = item_split_mask(full.targets, split, seed=seed)
        return SubsetByClass(full, list(range(num_classes)), item_mask=mask)
    return split_dataset(full, split, protocol)
