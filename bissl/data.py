"""Downstream data for BiSSL: labelled splits from the registry, label tensors, seeded batches.

Downstream sets come from ``bmssl.data.get_dataset(name, root, split, protocol="supervised")``.
A multi-label set (``dataset.multilabel = True``) yields float multi-hot ``[C]`` targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bmssl.data import get_dataset
from bmssl.data.base import ImageDataset
from bmssl.errors import UserError


def load_downstream(
    name: str,
    root: str | None,
    split: str,
    image_size: int,
    options: dict[str, Any] | None = None,
) -> ImageDataset:
    """A downstream split (supervised protocol: every class in every split)."""
    return get_dataset(
        name, root, split=split, protocol="supervised", image_size=image_size, **(options or {})
    )


def is_multilabel(dataset: Any) -> bool:
    """True for multi-label sets (multi-hot targets), e.g. VOC 2007."""
    return bool(getattr(dataset, "multilabel", False))


def num_outputs(dataset: Any) -> int:
    """Width of the classifier head: the number of classes."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise UserError(f"dataset {type(dataset).__name__} has no 'classes'; cannot size the head")
    return len(classes)


def label_tensor(dataset: Any) -> torch.Tensor:
    """All targets: ``long [N]`` (single-label) or ``float [N, C]`` multi-hot (multi-label).

    Multi-label sets may expose their multi-hot matrix as ``label_matrix`` / ``multi_hot``;
    otherwise the items are read once.
    """
    if is_multilabel(dataset):
        for attr in ("label_matrix", "multi_hot", "targets_multi_hot"):
            matrix = getattr(dataset, attr, None)
            if matrix is not None:
                return torch.as_tensor(np.asarray(matrix), dtype=torch.float32)
        return torch.stack([torch.as_tensor(dataset[i][1]).float() for i in range(len(dataset))])
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return torch.as_tensor(np.asarray(targets), dtype=torch.long)


def get_images(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    """Images ``[len(indices), C, H, W]`` (fast path for tensor-backed sets)."""
    if isinstance(dataset, ImageDataset):
        return dataset.get_batch(indices)
    return torch.stack([dataset[int(i)][0] for i in indices])


@dataclass
class BatchStream:
    """Seeded, resumable stream of index batches: epoch ``e`` is a permutation drawn from
    ``(seed, stream, e)``; process ``rank`` of ``world`` takes every ``world``-th index; the last
    incomplete batch of an epoch is dropped. ``state_dict`` holds (epoch, position) only.
    """

    size: int
    batch_size: int
    seed: int = 0
    stream: int = 0
    rank: int = 0
    world: int = 1
    epoch: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        per_rank = self.size // self.world
        if per_rank < self.batch_size:
            raise UserError(
                f"batch_size={self.batch_size} is larger than the {per_rank} images available to "
                f"each process (dataset of {self.size}); lower batch_size"
            )
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.stream, self.epoch])
            self._order = rng.permutation(self.size)[self.rank :: self.world]
        return self._order

    def next(self) -> np.ndarray:
        """The next batch of indices ``[batch_size]``."""
        order = self._epoch_order()
        if self.position + self.batch_size > len(order):
            self.epoch += 1
            self.position = 0
            self._order = None
            order = self._epoch_order()
        batch = order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None
