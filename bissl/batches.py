"""Seeded, resumable batches of indices for BiSSL's training streams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bmssl.errors import UserError


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
