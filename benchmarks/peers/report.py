"""What ``bench_peers.py`` prints: one block per row, then the issue's goals and the worst ratio."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.peers import measure

OURS_META = ("func-vmap", "func-vmap-chunk1", "higher", "autograd")
DEFAULT_META = "func-vmap"
GPU_MEMORY_GB = 24.0


def _median(times: list[float]) -> float:
    return statistics.median(times)


def row_lines(row: dict[str, Any], peak: float) -> list[str]:
    """A row's sides (median seconds and peak MiB), its ratios, skipped peers and FLOP/s."""
    times = row["times_s"]
    lines = [f"{row['path']} | {row['case']}"]
    for name, t in times.items():
        lines.append(f"  {name:18s} {_median(t):8.4f} s  peak {row['peak_mb'][name]:8.1f} MB")
    if row["path"] == "meta step":
        for ours, by_peer in row["ratios_by_backend"].items():
            parts = ", ".join(f"{p} {measure.fmt_ratio(s)}" for p, s in by_peer.items())
            lines.append(f"  peer / {ours}: {parts}")
        diffs = row["grad_rel_diff_f64_vs_autograd"]
        lines.append("  float64 max rel diff vs autograd: " + ", ".join(
            f"{k} {v:.1e}" for k, v in diffs.items()))  # fmt: skip
        ours_time = _median(times["autograd"])
    else:
        for peer, stats in row["ratios"].items():
            lines.append(f"  {peer} / ours: {measure.fmt_ratio(stats)}")
        ours_time = _median(times["ours"])
    for peer, why in row.get("skipped", {}).items():
        lines.append(f"  {peer} skipped: {why}")
    for peer, diff in row.get("grad_rel_diff_vs_ours", {}).items():
        lines.append(f"  {peer} gradient rel diff vs ours (float32): {diff:.1e}")
    if row.get("flops"):
        rate = measure.flop_rate(row["flops"], ours_time, peak)
        row["flop_rate"] = rate
        lines.append(f"  ours: {measure.fmt_flops(rate)}")
    else:
        lines.append("  ours: no matmul or convolution FLOPs (element-wise ops are not counted)")
    return lines


def flop_lines(rows: list[dict[str, Any]], peak: float) -> list[str]:
    """Each row's achieved FLOP/s against the final peak (our side; the meta-step's autograd)."""
    lines = []
    for row in rows:
        if not row.get("flops"):
            continue
        times = row["times_s"]["autograd" if row["path"] == "meta step" else "ours"]
        row["flop_rate"] = measure.flop_rate(row["flops"], _median(times), peak)
        lines.append(f"  {row['path']} | {row['case']}: {measure.fmt_flops(row['flop_rate'])}")
    return lines


def _fastest_peer(ratios: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The ratio against the fastest peer: the smallest median."""
    if not ratios:
        return None
    return min(ratios.values(), key=lambda s: s["median"])


def _meta_best(row: dict[str, Any]) -> str:
    """Our fastest backend in this row (smallest median time)."""
    return min(OURS_META, key=lambda name: _median(row["times_s"][name]))


def _path_ratios(rows: list[dict[str, Any]], default: bool) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["path"] == "meta step":
            ours = DEFAULT_META if default else _meta_best(row)
            stats = _fastest_peer(row["ratios_by_backend"][ours])
        else:
            ours, stats = "ours", _fastest_peer(row["ratios"])
        if stats is not None:
            out.append({"path": row["path"], "case": row["case"], "ours": ours, **stats})
    return out


def _memory_goal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per second-order meta row: each backend's peak MiB and time against higher's."""
    out = []
    for row in rows:
        if row["path"] != "meta step" or row["order"] != "second":
            continue
        higher_t, higher_mb = _median(row["times_s"]["higher"]), row["peak_mb"]["higher"]
        for name in OURS_META:
            mem = row["peak_mb"][name] / higher_mb if higher_mb > 0 else float("inf")
            speed = higher_t / _median(row["times_s"][name])
            out.append({"L": row["L"], "backend": name, "memory_x_higher": mem,
                        "speed_x_higher": speed, "met": mem <= 2.0 and speed >= 1.0})  # fmt: skip
    return out


def goals(rows: list[dict[str, Any]], paper: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, each as measured ratios (see goal_lines)."""
    best, default = _path_ratios(rows, False), _path_ratios(rows, True)
    meta = [r for r in best if r["path"] == "meta step"]
    first = [r for r in rows if r["path"] == "meta step" and "first_over_second" in r]
    first = [r for r in first if r["L"] == 1 and r["order"] == "first"]
    worst = min(best, key=lambda r: r["median"]) if best else {"median": float("nan")}
    return {
        "per_path": best,
        "per_path_default_backend": default,
        "worst_ratio": worst,
        "worst_ratio_default_backend": min(default, key=lambda r: r["median"]) if default else None,
        "meta_vs_fastest_peer": meta,
        "memory": _memory_goal(rows),
        "first_over_second_L1": first[0]["first_over_second"] if first else {},
        "paper_memory": paper,
    }


def goal_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["goals (ratio = peer time / our time, median (min-max) over rounds):"]
    for r in summary["per_path"]:
        ok = "met" if r["median"] >= 1.0 else "NOT met"
        lines.append(f"  >= 1.0x fastest peer, {r['path']} {r['case']} [{r['ours']}]: "
                     f"{measure.fmt_ratio(r)} {ok}")  # fmt: skip
    for r in summary["per_path_default_backend"]:
        if r["path"] == "meta step":
            lines.append(f"  default backend ({r['ours']}) {r['case']}: {measure.fmt_ratio(r)}")
    for r in summary["meta_vs_fastest_peer"]:
        ok = "met" if r["median"] >= 1.5 else "NOT met"
        lines.append(f"  meta-step >= 1.5x fastest peer, {r['case']}: {r['median']:.2f}x {ok}")
    for m in summary["memory"]:
        lines.append(f"  memory L={m['L']} {m['backend']}: {m['memory_x_higher']:.2f}x higher's "
                     f"peak at {m['speed_x_higher']:.2f}x its speed: "
                     f"{'met' if m['met'] else 'NOT met'}")  # fmt: skip
    for name, s in summary["first_over_second_L1"].items():
        ok = "met" if s["median"] <= 0.7 else "NOT met"
        lines.append(f"  first/second order time at L=1, {name}: {measure.fmt_ratio(s)} {ok}")
    for p in summary["paper_memory"]:
        ok = "met" if p.get("max_rss_gb", 1e9) <= GPU_MEMORY_GB else "NOT met"
        lines.append(f"  paper-preset miniImageNet step, {p}: {ok} (<= {GPU_MEMORY_GB} GB)")
    w = summary.get("worst_ratio_default_backend")
    if w:
        lines.append(f"worst ratio over peers with the default meta backend: {w['median']:.2f}×")
    return lines


def paper_memory(args: Any) -> list[dict[str, Any]]:
    """One paper-preset step per memory-lean backend, each in a fresh process (the default
    ``func`` + ``vmap`` over all 4 tasks is left out: it needed more than this box's 24 GB)."""
    script = Path(__file__).with_name("paper_memory.py")
    out = []
    for backend, chunk in (("autograd", 0), ("func", 1)):
        cmd = [sys.executable, str(script), "--backend", backend, "--task-chunk", str(chunk)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            out.append({"backend": backend, "task_chunk": chunk, "failed": done.stderr[-400:]})
            continue
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def profile_lines(top: dict[str, list[dict[str, Any]]]) -> list[str]:
    """``--profile``: each side's heaviest ops with their share of its self CPU time."""
    lines = []
    for side, ops in top.items():
        lines.append(f"profile of the meta-step, {side} (self CPU time):")
        for op in ops:
            lines.append(f"  {op['op']:44s} {op['ms']:9.1f} ms {100 * op['share']:5.1f}% "
                         f"x{op['calls']}")  # fmt: skip
    return lines
