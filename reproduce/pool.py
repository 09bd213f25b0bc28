"""Run a table's jobs in this process or in a pool of spawned worker processes.

Each job's result reaches ``on_done`` as soon as it finishes, so a killed run loses no finished
job (every checkpoint and cell is written atomically). Ctrl-C terminates the workers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")


def _ignore_interrupts() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle; it terminates the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_numbered(item: tuple[int, Callable[[Any], Any], Any]) -> tuple[int, Any]:
    index, run, job = item
    return index, run(job)


def run_jobs(
    jobs: Sequence[J],
    run: Callable[[J], Any],
    workers: int,
    on_done: Callable[[J, Any], None],
    cost: Callable[[J], float] = lambda job: 0.0,
) -> None:
    """``on_done(job, run(job))`` for every job; ``run`` must be a picklable top-level function.

    With ``workers`` > 1 the jobs run in spawned processes, the costliest first (less idle
    time at the end); spawn, not fork, because forking a process whose torch thread pools are
    live can deadlock.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, run(job))
        return
    import multiprocessing

    ordered = sorted(jobs, key=lambda j: -cost(j))
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(min(workers, len(jobs)), initializer=_ignore_interrupts)
    try:
        items = [(i, run, job) for i, job in enumerate(ordered)]
        for index, result in pool.imap_unordered(_run_numbered, items):
            on_done(ordered[index], result)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def spread_devices(device: str, index: int) -> str:
    """The device of job ``index``: with several visible GPUs, ``auto``/``cuda`` jobs go round
    robin over them (``cuda:index % n``); otherwise ``device`` unchanged."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{index % count}" if count > 1 else device
