"""Training batches decoded ahead in DataLoader worker processes.

In this harness a training batch is a pure function of the step: ``indices_for_step(step)``
names the images (derived from the run's seed and the step), ``dataset.get_batch`` decodes
them. :class:`StepBatchLoader` serves ``get(step)`` with exactly that batch; with ``workers > 0``
a ``torch.utils.data.DataLoader`` over the steps keeps the next ``prefetch × workers`` batches
decoding in worker processes, so the training process only waits for images when decoding is
slower than training. Results are bit-identical to ``workers = 0`` (the same ``get_batch`` runs,
only elsewhere), and a ``get`` off the expected sequence (a resume, a skipped step) restarts the
stream at that step, so resuming stays exact.

Workers use one torch thread each, and the main process's random streams are left alone (the
DataLoader's worker seeds come from a private generator, and nothing here is random). With the
default ``fork`` start method on Linux the dataset and ``indices_for_step`` are inherited; with
``spawn`` or ``forkserver`` they must be picklable (a module-level function, or a
``functools.partial`` of one).

In-memory datasets (``dataset.in_memory``: decoded ``uint8`` tensors) gain nothing from workers
(a batch is one indexing op), so they are always served in the calling process.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bmssl.data.base import ImageDataset
from bmssl.errors import UserError

IndicesForStep = Callable[[int], np.ndarray]


class _Steps(Sampler[int]):
    """``start, start + 1, …`` without end; ``start`` is set before each (re)start."""

    def __init__(self) -> None:
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


class _Failure:
    """An exception raised in a worker, carried back as a value.

    DataLoader re-raises worker errors as its own wrapper (a RuntimeError when the type cannot be
    rebuilt from a message, as :class:`~bmssl.data.images.CorruptImageError` cannot), so the
    batch function returns this instead and the main process raises the original again: same
    type, message and attributes, rebuilt without calling the type's constructor.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        error = self.error
        return (_rebuild, (type(error), error.args, dict(vars(error))))


def _rebuild(kind: type[BaseException], args: tuple, state: dict) -> _Failure:
    error = kind.__new__(kind)
    error.args = args
    vars(error).update(state)
    return _Failure(error)


class _StepBatches(Dataset):
    """Map-style dataset over steps: item ``step`` is ``(step, batch)`` or ``(step, _Failure)``."""

    def __init__(self, dataset: ImageDataset, indices_for_step: IndicesForStep) -> None:
        self.dataset = dataset
        self.indices_for_step = indices_for_step

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor | _Failure]:
        try:
            return step, self.dataset.get_batch(self.indices_for_step(step))
        except Exception as error:  # carried to the main process, raised there
            failure = _Failure(error)
            try:
                pickle.dumps(failure)
            except Exception:  # state that cannot travel: keep the type's name and message
                failure = _Failure(RuntimeError(f"{type(error).__name__}: {error}"))
            return step, failure


def _one_thread(_worker_id: int) -> None:
    # DataLoader already does this in its worker loop; stated here because the loader relies
    # on it (W workers share the cores with the training process).
    torch.set_num_threads(1)


class StepBatchLoader:
    """``get(step)`` returns ``dataset.get_batch(indices_for_step(step))``, decoded ahead in
    ``workers`` processes (0: in this process), ``prefetch`` batches per worker.

    ``pin_memory`` pins the batches (page-locked, for fast asynchronous copies to the GPU) when
    CUDA is available and is ignored otherwise. Use as a context manager, or call
    :meth:`close`; the workers also stop when the loader is garbage-collected.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        indices_for_step: IndicesForStep,
        workers: int = 0,
        pin_memory: bool = False,
        prefetch: int = 2,
        multiprocessing_context: str | None = None,
    ) -> None:
        if workers < 0 or prefetch < 1:
            raise UserError(
                f"loader workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}"
            )
        self.dataset = dataset
        self.indices_for_step = indices_for_step
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.workers = 0 if dataset.in_memory else workers
        self._next: int | None = None  # the step the stream yields next
        self._iter: Iterator[tuple[int, Any]] | None = None
        self._loader: DataLoader | None = None
        self._steps = _Steps()
        if self.workers:
            self._loader = DataLoader(
                _StepBatches(dataset, indices_for_step),
                batch_size=None,
                sampler=self._steps,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                prefetch_factor=prefetch,
                persistent_workers=True,
                worker_init_fn=_one_thread,
                # The workers' base seed is drawn from this generator, not the global one.
                generator=torch.Generator().manual_seed(0),
                multiprocessing_context=multiprocessing_context,
            )

    def get(self, step: int) -> torch.Tensor:
        """The batch of ``step``: images ``[B, C, H, W]``, float in [0, 1]."""
        if self._loader is None:
            if self.workers:
                raise RuntimeError("the loader is closed")
            batch = self.dataset.get_batch(self.indices_for_step(step))
            return batch.pin_memory() if self.pin_memory else batch
        if self._iter is None or step != self._next:
            self._steps.start = step  # restart the stream here (a persistent loader reuses workers)
            self._iter = iter(self._loader)
        try:
            got, batch = next(self._iter)
        except Exception:  # a worker died (a failing get_batch comes back as a _Failure)
            self.close()
            raise
        self._next = step + 1
        if got != step:
            raise RuntimeError(f"loader stream out of order: wanted step {step}, got {got}")
        if isinstance(batch, _Failure):
            if hasattr(batch.error, "add_note"):  # Python 3.11+
                batch.error.add_note(f"(raised in a data loader worker, step {step})")
            raise batch.error
        return batch

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        iterator, self._iter, self._loader = self._iter, None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> StepBatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
