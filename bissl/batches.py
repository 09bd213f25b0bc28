"""Downstream data for BiSSL: labelled splits from the registry and seeded, resumable batches.

Downstream sets come from ``bmssl.data.get_dataset(name, root, split, protocol="supervised")``;
their labels are ``dataset.labels()`` (``long [N]``, or float multi-hot ``[N, C]`` for a
multi-label set such as VOC 2007, ``dataset.multilabel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bmssl.data import get_dataset
from bmssl.data.base import ImageDataset, SubsetByClass
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


def downstream_split(config: Any, split: str) -> ImageDataset:
    """Split ``split`` of ``config``'s downstream set; with ``config.labels_per_class`` the train
    split keeps that many images per class, drawn with ``config.seed`` (the val and test splits
    stay whole). For a multi-label set a class's images are those that carry it."""
    data = load_downstream(
        config.dataset, config.data_root, split, config.image_size, config.dataset_options
    )
    limit = config.labels_per_class
    if split != "train" or limit is None:
        return data
    rng = np.random.default_rng([config.seed, 17])
    labels = data.labels().numpy()
    per_class = [np.nonzero(labels[:, c] > 0 if labels.ndim == 2 else labels == c)[0]
                 for c in range(data.num_classes)]  # fmt: skip
    short = [data.classes[c] for c, idx in enumerate(per_class) if len(idx) < limit]
    if short:
        raise UserError(
            f"labels_per_class={limit} but {len(short)} class(es) of {config.dataset} have fewer "
            f"training images (e.g. {short[0]!r}); lower labels_per_class"
        )
    keep = np.concatenate([rng.choice(idx, limit, replace=False) for idx in per_class])
    mask = np.zeros(len(data), dtype=bool)
    mask[keep] = True
    return SubsetByClass(data, list(range(data.num_classes)), item_mask=mask)


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
