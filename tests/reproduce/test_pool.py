"""reproduce.pool: results as jobs finish, worker errors raised in the parent, no hangs."""

from __future__ import annotations

import os

import pytest

from bmssl.errors import UserError
from reproduce.pool import run_jobs


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    if x == 2:
        raise UserError(f"job {x} has a bad value")
    return x


def die(x: int) -> int:
    if x == 1:
        os._exit(9)  # killed before it can report (as an out-of-memory kill would)
    return x


def test_parallel_results_equal_serial_ones() -> None:
    serial: dict[int, int] = {}
    parallel: dict[int, int] = {}
    run_jobs([1, 2, 3], square, 1, lambda j, r: serial.__setitem__(j, r))
    run_jobs([1, 2, 3], square, 2, lambda j, r: parallel.__setitem__(j, r), cost=lambda j: j)
    assert serial == parallel == {1: 1, 2: 4, 3: 9}


def test_a_worker_user_error_is_raised_as_one() -> None:
    with pytest.raises(UserError, match="job 2 has a bad value"):
        run_jobs([1, 2, 3], fail, 2, lambda j, r: None)


def test_a_worker_that_dies_is_reported_not_waited_for() -> None:
    with pytest.raises(RuntimeError, match="exit code 9"):
        run_jobs([1, 2], die, 2, lambda j, r: None)
