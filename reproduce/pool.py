"""Run a table's jobs in this process or in spawned worker processes.

Each job's result reaches ``on_done`` as soon as it finishes, so a killed run loses no finished
job (every checkpoint and cell is written atomically). Ctrl-C (or any error) kills the workers
at once.

Hand-made rather than ``multiprocessing.Pool``: ``Pool.terminate`` first takes the task queue's
read lock, which an idle worker waiting for a task holds, so an interrupted pool can hang; here
the parent only writes tasks and reads results, and kills its workers directly.
"""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")


def _worker(run: Callable[[Any], Any], tasks: Any, results: Any) -> None:
    """A worker: run bundles ``[(index, job), ...]`` until ``None``, putting ``(index, ok,
    payload)`` as each job of a bundle finishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while (bundle := tasks.get()) is not None:
        for index, job in bundle:
            try:
                results.put((index, True, run(job)))
            except BaseException as err:  # noqa: BLE001 - reported to the parent, which re-raises
                from bmssl.errors import UserError

                message = str(err) if isinstance(err, UserError) else traceback.format_exc()
                results.put((index, False, (isinstance(err, UserError), message)))
                return


def bundles(jobs: Sequence[J], group: Callable[[J], Hashable] | None) -> list[list[tuple[int, J]]]:
    """``jobs`` (numbered in their order) gathered by ``group`` key: the groups in order of
    first appearance, each keeping its jobs' order."""
    groups: dict[Hashable, list[tuple[int, J]]] = {}
    for index, job in enumerate(jobs):
        key = group(job) if group is not None else index
        groups.setdefault(key, []).append((index, job))
    return list(groups.values())


def run_jobs(
    jobs: Sequence[J],
    run: Callable[[J], Any],
    workers: int,
    on_done: Callable[[J, Any], None],
    cost: Callable[[J], float] = lambda job: 0.0,
    group: Callable[[J], Hashable] | None = None,
) -> None:
    """``on_done(job, run(job))`` for every job; ``run`` must be a picklable top-level function.

    With ``workers`` > 1 at most that many jobs run at once, each in a spawned process, the
    costliest first (less idle time at the end); spawn, not fork, because forking a process whose
    torch thread pools are live can deadlock. Jobs with the same ``group`` key run in their
    order in one worker (e.g. jobs that train and then reuse one cached stage). A job's user
    error is raised again here as a :class:`bmssl.errors.UserError` (exit 2); any other failure
    as a ``RuntimeError`` with the worker's traceback.
    """
    work = bundles(jobs, group)
    if workers <= 1 or len(work) <= 1:
        for bundle in work:
            for _, job in bundle:
                on_done(job, run(job))
        return
    import multiprocessing
    import queue

    from bmssl.errors import UserError

    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    for bundle in sorted(work, key=lambda b: -sum(cost(job) for _, job in b)):
        tasks.put(bundle)
    count = min(workers, len(work))
    for _ in range(count):
        tasks.put(None)
    processes = [context.Process(target=_worker, args=(run, tasks, results)) for _ in range(count)]
    try:
        for process in processes:
            process.start()
        for _ in jobs:
            while True:
                try:
                    index, ok, payload = results.get(timeout=1.0)
                    break
                except queue.Empty:
                    dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                    if dead:  # killed (e.g. out of memory) before it could report
                        raise RuntimeError(
                            f"a worker process died with exit code {dead[0]}"
                        ) from None
            if not ok:
                is_user_error, message = payload
                raise UserError(message) if is_user_error else RuntimeError(message)
            on_done(jobs[index], payload)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            if process.pid is not None:
                process.join()


def spread_devices(device: str, index: int) -> str:
    """The device of job ``index``: with several visible GPUs, ``auto``/``cuda`` jobs go round
    robin over them (``cuda:index % n``); otherwise ``device`` unchanged."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{index % count}" if count > 1 else device
