"""A local root's images with the split each came from, and the protocols' splits of it.

Split folders and ``DatasetDict`` members are used as given, with one addition: a missing ``val``
is carved out of ``train`` (its last 20% of classes for ``fewshot``; a seeded 10% of each class's
images for ``supervised``). The ``fewshot`` protocol needs class-disjoint splits: given splits
that share classes raise :class:`UserError` (pass ``protocol="supervised"``, or pool the images
in one ``<class>/<image>`` tree to have them split by class). ``unlabeled`` pools every image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from bmssl.data.base import (
    ImageDataset,
    PILImageDataset,
    SubsetByClass,
    drop_unreadable,
    preload_if,
)
from bmssl.data.splitting import SPLITS, carve_val, split_dataset
from bmssl.errors import UserError

VAL_CLASS_FRACTION = 0.2
VAL_ITEM_FRACTION = 0.1


class LabelledSource:
    """Every image of a local root with global class names, and the split each came from (or ``None``)."""

    def __init__(
        self, dataset: PILImageDataset, part: Sequence[str] | np.ndarray | None, where: str
    ) -> None:
        self.dataset = dataset
        self.part = None if part is None else np.asarray(part)
        self.where = where

    def without_unreadable(self) -> LabelledSource:
        """The source less its undecodable images (one warning says how many)."""
        dataset, part = drop_unreadable(self.dataset, self.part, self.where)
        return LabelledSource(dataset, part, self.where)


def _carve_val_classes(part: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mark the last classes of ``train`` as ``val`` (few-shot: val classes unseen in train)."""
    part = part.astype(object)
    train = part == "train"
    train_classes = np.unique(targets[train])
    n_val = max(1, int(round(VAL_CLASS_FRACTION * len(train_classes))))
    if n_val >= len(train_classes):
        raise UserError("too few training classes to carve a val split from; add a val folder")
    part[train & np.isin(targets, train_classes[-n_val:])] = "val"
    return part


def _check_class_disjoint(source: LabelledSource, classes: dict[str, set[int]]) -> None:
    shared = set().union(*(a & b for a, b in itertools.combinations(classes.values(), 2)))
    if shared:
        names = sorted(source.dataset.classes[c] for c in shared)
        shown = ", ".join(map(repr, names[:3])) + (" ..." if len(names) > 3 else "")
        raise UserError(
            f"{source.where}: its {'/'.join(classes)} splits share {len(shared)} classes "
            f"({shown}), but the few-shot protocol needs class-disjoint splits: make the split "
            "folders class-disjoint, or put the images in one <class>/<image> tree to have it "
            "split by class"
        )


def split_source(source: LabelledSource, split: str, protocol: str) -> ImageDataset:
    """The ``split`` of a source under ``protocol`` (see the module docstring for the rules)."""
    full = source.dataset
    if source.part is None or protocol == "unlabeled":
        return split_dataset(full, split, protocol)
    targets = np.asarray(full.targets)
    part = source.part
    if "val" not in set(part.tolist()):
        if protocol == "fewshot":
            part = _carve_val_classes(part, targets)
        else:
            part = carve_val(targets, part, VAL_ITEM_FRACTION)
    classes = {s: set(np.unique(targets[part == s]).tolist()) for s in SPLITS if (part == s).any()}
    if split not in classes:
        raise UserError(
            f"{source.where} has no {split!r} split (found {', '.join(classes)}); add a {split} folder or split"
        )
    if protocol == "fewshot":
        _check_class_disjoint(source, classes)
        return SubsetByClass(full, sorted(classes[split]), item_mask=part == split)
    return SubsetByClass(full, list(range(full.num_classes)), item_mask=part == split)


def finish_source(
    source: LabelledSource, split: str, protocol: str, skip_corrupt: bool, preload: bool
) -> ImageDataset:
    """The options every local-root loader shares: ``skip_corrupt`` leaves out undecodable
    images (decoding each once, before splitting), then the split, then ``preload``."""
    from bmssl.data.images import skip_corrupt_requested

    if skip_corrupt or skip_corrupt_requested():
        source = source.without_unreadable()
    return preload_if(split_source(source, split, protocol), preload)
