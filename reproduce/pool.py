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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")


def _worker(run: Callable[[Any], Any], tasks: Any, results: Any) -> None:
    """A worker: run ``(index, job)`` tasks until ``None``, putting ``(index, ok, payload)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while (task := tasks.get()) is not None:
        index, job = task
        try:
            results.put((index, True, run(job)))
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which re-raises
            from bmssl.errors import UserError

            message = str(err) if isinstance(err, UserError) else traceback.format_exc()
            results.put((index, False, (isinstance(err, UserError), message)))
            return


def run_jobs(
    jobs: Sequence[J],
    run: Callable[[J], Any],
    workers: int,
    on_done: Callable[[J, Any], None],
    cost: Callable[[J], float] = lambda job: 0.0,
) -> None:
    """``on_done(job, run(job))`` for every job; ``run`` must be a picklable top-level function.

    With ``workers`` > 1 at most that many jobs run at once, each in a spawned process, the
    costliest first (less idle time at the end); spawn, not fork, because forking a process whose
    torch thread pools are live can deadlock. A job's user error is raised again here as a
    :class:`bmssl.errors.UserError` (exit 2); any other failure as a ``RuntimeError`` with the
    worker's traceback.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, run(job))
        return
    import multiprocessing
    import queue

    from bmssl.errors import UserError

    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    ordered = sorted(jobs, key=lambda j: -cost(j))
    for task in enumerate(ordered):
        tasks.put(task)
    count = min(workers, len(ordered))
    for _ in range(count):
        tasks.put(None)
    processes = [context.Process(target=_worker, args=(run, tasks, results)) for _ in range(count)]
    try:
        for process in processes:
            process.start()
        for _ in ordered:
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
            on_done(ordered[index], payload)
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
