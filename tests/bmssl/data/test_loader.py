"""StepBatchLoader: the batch of a step, the same from worker processes as from the caller."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bmssl.data import ImageDataset, StepBatchLoader, TensorImageDataset, get_dataset
from bmssl.data.images import CorruptImageError
from bmssl.errors import UserError
from tests.fakes import class_names, write_class_tree

BATCH = 5


def _indices(step: int, n: int) -> np.ndarray:
    """A batch of a step, a pure function of the step (as the trainers draw theirs)."""
    return np.random.default_rng([7, step]).choice(n, BATCH, replace=False)


def _tree(root: Path) -> ImageDataset:
    write_class_tree(root, class_names(4), per_class=4)
    return get_dataset(f"imagefolder:{root}", protocol="unlabeled", image_size=8)


def _no_children() -> bool:
    return not multiprocessing.active_children()


def test_workers_give_exactly_the_batches_of_the_calling_process(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    indices = functools.partial(_indices, n=len(data))
    with StepBatchLoader(data, indices) as here, StepBatchLoader(data, indices, workers=2) as ahead:
        assert ahead.workers == 2
        for step in range(6):
            want = data.get_batch(indices(step))
            got = ahead.get(step)
            assert got.shape == (BATCH, 3, 8, 8)
            assert torch.equal(got, want) and torch.equal(here.get(step), want)
        # Off the sequence (a resume, a skip, a step back): the stream restarts there.
        for step in (11, 12, 3, 3, 4):
            assert torch.equal(ahead.get(step), data.get_batch(indices(step)))
    assert _no_children()


def test_workers_run_one_torch_thread_and_leave_the_callers_random_streams_alone(
    tmp_path: Path,
) -> None:
    data = _tree(tmp_path)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with StepBatchLoader(_Threads(), _step_only, workers=2) as loader:
        assert int(loader.get(0).flatten()[0]) == 1  # torch.get_num_threads() in the worker
        loader.get(5)
    with StepBatchLoader(data, functools.partial(_indices, n=len(data)), workers=1) as loader:
        loader.get(0)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


class _Threads(ImageDataset):
    """A file-less dataset whose batch reports the torch threads of the process decoding it."""

    targets, classes, image_shape = [0], ["a"], (1, 1, 1)

    def get_batch(self, indices) -> torch.Tensor:
        return torch.full((1, 1, 1, 1), float(torch.get_num_threads()))


def _step_only(step: int) -> np.ndarray:
    return np.array([0])


def test_close_stops_the_workers_and_so_does_dropping_the_loader(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    indices = functools.partial(_indices, n=len(data))
    loader = StepBatchLoader(data, indices, workers=2, prefetch=3)
    loader.get(0)
    workers = multiprocessing.active_children()
    assert len(workers) == 2 and all(p.is_alive() for p in workers)
    loader.close()
    loader.close()  # idempotent
    assert _no_children() and not any(p.is_alive() for p in workers)
    with pytest.raises(RuntimeError, match="closed"):
        loader.get(1)
    dropped = StepBatchLoader(data, indices, workers=2)
    dropped.get(0)
    assert len(multiprocessing.active_children()) == 2
    del dropped
    gc.collect()
    assert _no_children()


def test_a_corrupt_image_in_a_worker_raises_the_same_user_error_here(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    victim = 6
    data.base.paths[data.indices[victim]].write_bytes(b"this is not an image at all")

    def indices(step: int) -> np.ndarray:
        return np.array([victim, 0]) if step == 2 else np.array([1, 2])

    with StepBatchLoader(data, indices) as here, pytest.raises(CorruptImageError) as expected:
        here.get(2)
    with StepBatchLoader(data, indices, workers=2) as ahead:
        assert torch.equal(ahead.get(1), data.get_batch([1, 2]))
        with pytest.raises(CorruptImageError) as raised:
            ahead.get(2)
        assert isinstance(raised.value, UserError)
        assert (
            str(raised.value) == str(expected.value) and raised.value.where == expected.value.where
        )
        assert torch.equal(ahead.get(3), data.get_batch([1, 2]))  # the stream goes on


def test_in_memory_sets_are_served_here_and_bad_settings_are_user_errors() -> None:
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    held = TensorImageDataset(images, [0] * 10, ["a"])
    indices = functools.partial(_indices, n=10)
    with StepBatchLoader(held, indices, workers=2) as loader:
        assert loader.workers == 0
        assert torch.equal(loader.get(4), held.get_batch(indices(4)))
        assert _no_children()
    for bad in ({"workers": -1}, {"prefetch": 0}):
        with pytest.raises(UserError, match="loader workers"):
            StepBatchLoader(held, indices, **bad)
