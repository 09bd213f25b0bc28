"""Shared measurement: interleaved timing, per-round ratios, peak memory, FLOPs and the box's
measured matmul peak.

Timing alternates the compared callables round by round (after one warm-up each), so that
neighbours on a shared machine disturb every side alike; a ratio is taken per round (peer time /
our time of the same round) and reported as median and min–max over the rounds.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

Fn = Callable[[], object]


def clock(kind: str) -> Callable[[], float]:
    """``time.process_time`` (``cpu``: what the process itself spent) or ``time.perf_counter``."""
    return time.process_time if kind == "cpu" else time.perf_counter


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA), so a timer sees it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Fn], repeats: int, kind: str = "wall", device: Any = None
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs of every callable, alternating them round by round."""
    now = clock(kind)
    for fn in fns.values():
        fn()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = now()
            fn()
            sync(device)
            times[name].append(now() - start)
    return times


def ratio_stats(peer: list[float], ours: list[float]) -> dict[str, Any]:
    """Per-round ``peer / ours``: median, min, max and the rounds' values."""
    rounds = [p / o for p, o in zip(peer, ours) if o > 0]
    return {
        "median": statistics.median(rounds),
        "min": min(rounds),
        "max": max(rounds),
        "rounds": rounds,
    }


def fmt_ratio(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.2f}x ({stats['min']:.2f}-{stats['max']:.2f})"


def peak_mb(fn: Fn, device: Any = None) -> float:
    """Peak memory of one run of ``fn`` in MiB, above what was allocated before it: CUDA's
    allocator peak, or on the CPU the running sum of the profiler's memory events."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Every allocation and free is one "[memory]" record of the raw results; their running sum
    # in time order is the allocated total. (Building the profiler's Python events instead
    # takes minutes for a vmapped meta-step.)
    raw = getattr(prof.profiler, "kineto_results", None)
    if raw is None:
        deltas = [(e.time_range.start, e.cpu_memory_usage) for e in prof.events()
                  if e.name == "[memory]"]  # fmt: skip
    else:
        deltas = [(e.start_ns(), e.nbytes()) for e in raw.events() if e.name() == "[memory]"]
    current = peak = 0
    for _, delta in sorted(deltas):
        current += delta
        peak = max(peak, current)
    return peak / 2**20


def count_flops(fn: Fn) -> int:
    """FLOPs of one run of ``fn`` as ``torch.utils.flop_counter`` counts them (matrix products
    and convolutions, forward and backward; element-wise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: Any = None, size: int = 1024, repeats: int = 20) -> float:
    """This box's float32 matmul FLOP/s (best of ``repeats`` products of two ``size``² matrices,
    at the current thread count): the arithmetic ceiling the steps are compared with."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flop_rate(flops: int, seconds: float, peak: float) -> dict[str, float]:
    """Achieved FLOP/s of a step and its fraction of the measured matmul peak."""
    rate = flops / seconds if seconds > 0 else 0.0
    return {"flops": flops, "gflop_per_s": rate / 1e9, "fraction_of_peak": rate / peak}


def fmt_flops(rate: dict[str, float]) -> str:
    return (
        f"{rate['flops'] / 1e9:.2f} GFLOP, {rate['gflop_per_s']:.1f} GFLOP/s = "
        f"{100 * rate['fraction_of_peak']:.1f}% of the matmul peak"
    )


def peer_version(module: str, dist: str | None = None) -> tuple[str | None, str | None]:
    """``(version, None)`` when the peer imports, else ``(None, why)`` (the reason is printed)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # a peer may fail on import for many reasons; record which
        return None, f"{type(err).__name__}: {err}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist or module), None
    except PackageNotFoundError:
        return "unknown", None
