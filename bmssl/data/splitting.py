"""How a dataset holding every class and image is divided into ``train`` / ``val`` / ``test``.

Three protocols:
- ``fewshot``: class-disjoint splits (meta-training on train classes, few-shot evaluation on
  held-out classes);
- ``supervised``: every class in every split, images divided (downstream tasks, BiSSL);
- ``unlabeled``: one pool of every image (self-supervised pretext data); only ``split="train"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bmssl.data.base import ImageDataset, SubsetByClass
from bmssl.errors import UserError

SPLITS = ("train", "val", "test")
PROTOCOLS = ("fewshot", "supervised", "unlabeled")
CLASS_FRACTIONS = (0.64, 0.16, 0.20)
ITEM_FRACTIONS = (0.7, 0.1, 0.2)


def class_split(
    num_classes: int, split: str, fractions: tuple[float, float, float] = CLASS_FRACTIONS
) -> list[int]:
    """Contiguous class-disjoint split by fractions (train/val/test) over classes ``0..n-1``."""
    n_train = int(round(fractions[0] * num_classes))
    n_val = int(round(fractions[1] * num_classes))
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, num_classes),
    }
    lo, hi = bounds[split]
    return list(range(lo, hi))


def item_split_mask(
    targets: Sequence[int] | np.ndarray,
    split: str,
    fractions: tuple[float, float, float] = ITEM_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask of the items in ``split``, stratified per class and seeded (supervised protocol)."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    which = np.empty(len(targets), dtype=np.int64)
    for c in np.unique(targets):
        idx = np.nonzero(targets == c)[0]
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        which[idx[:n_train]] = 0
        which[idx[n_train : n_train + n_val]] = 1
        which[idx[n_train + n_val :]] = 2
    return which == SPLITS.index(split)


def split_dataset(
    full: ImageDataset,
    split: str,
    protocol: str,
    class_fractions: tuple[float, float, float] = CLASS_FRACTIONS,
    item_fractions: tuple[float, float, float] = ITEM_FRACTIONS,
) -> ImageDataset:
    """Apply the protocol's split to a dataset holding every class and image."""
    every_class = list(range(full.num_classes))
    if protocol == "unlabeled":
        return SubsetByClass(full, every_class)
    if protocol == "fewshot":
        return SubsetByClass(full, class_split(full.num_classes, split, class_fractions))
    mask = item_split_mask(full.targets, split, item_fractions)
    return SubsetByClass(full, every_class, item_mask=mask)


def carve_val(
    targets: Sequence[int] | np.ndarray,
    part: Sequence[str] | np.ndarray,
    val_fraction: float,
    seed: int = 0,
) -> np.ndarray:
    """``part`` with a seeded, per-class ``val_fraction`` of the ``train`` items marked ``val``."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    part = np.asarray(part, dtype=object).copy()
    train = np.nonzero(part == "train")[0]
    val = item_split_mask(
        np.asarray(targets)[train],
        "val",
        fractions=(1.0 - val_fraction, val_fraction, 0.0),
        seed=seed,
    )
    part[train[val]] = "val"
    return part
