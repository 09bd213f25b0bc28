"""Run a table's jobs in this process or in spawned worker processes, one process per job.

Each job's result reaches ``on_done`` as soon as it finishes, so a killed run loses no finished
job (every checkpoint and cell is written atomically). Ctrl-C (or any error) terminates the
workers at once.

One process per job rather than ``multiprocessing.Pool``: ``Pool.terminate`` first takes the
task queue's read lock, which an idle worker waiting for a task holds, so an interrupted pool
can hang; here the parent owns every process and kills it directly.
"""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")


def _worker(run: Callable[[Any], Any], job: Any, index: int, results: Any) -> None:
    """A worker's whole life: run one job, put ``(index, ok, result or error text)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        results.put((index, True, run(job)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which re-raises
        from bmssl.errors import UserError

        message = str(err) if isinstance(err, UserError) else traceback.format_exc()
        results.put((index, False, (isinstance(err, UserError), message)))


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
    results = context.Queue()
    ordered = sorted(jobs, key=lambda j: -cost(j))
    pending = list(enumerate(ordered))
    running: dict[int, Any] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                index, job = pending.pop(0)
                process = context.Process(target=_worker, args=(run, job, index, results))
                process.start()
                running[index] = process
            try:
                index, ok, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in running.items() if p.exitcode not in (None, 0)]
                if dead:  # killed (e.g. out of memory) before it could report
                    code = running[dead[0]].exitcode
                    raise RuntimeError(f"a worker process died with exit code {code}") from None
                continue
            running.pop(index).join()
            if not ok:
                is_user_error, message = payload
                raise UserError(message) if is_user_error else RuntimeError(message)
            on_done(ordered[index], payload)
    finally:
        for process in running.values():
            process.kill()
        for process in running.values():
            process.join()


def spread_devices(device: str, index: int) -> str:
    """The device of job ``index``: with several visible GPUs, ``auto``/``cuda`` jobs go round
    robin over them (``cuda:index % n``); otherwise ``device`` unchanged."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{index % count}" if count > 1 else device
