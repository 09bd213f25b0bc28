"""Reading provenance records (:mod:`bmssl.provenance`): the one-line summary a Markdown table
shows, and the comparison of two records.

:func:`summary_line` is the line under every results table; :func:`flatten` and
:func:`differences` list the keys where two records differ (times and the working folder left
out); :func:`machine_kind` is what must agree for a CPU result to repeat bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _short(value: str | None, n: int = 10) -> str:
    return "?" if not value else value[:n]


def summary_line(record: Mapping[str, Any]) -> str:
    """One Markdown line: code, software, machine, torch settings and data (nothing that
    changes from one run of the same result to the next, such as times)."""
    code = record.get("code") or {}
    packages = record.get("packages") or {}
    machine = record.get("machine") or {}
    settings = record.get("torch") or {}
    commit = "no git commit" if not code.get("commit") else f"commit {_short(code['commit'])}"
    if code.get("dirty"):
        # Their hash is in the JSON only: the line of a rerun of the same result stays the same.
        commit += " + local edits"
    elif code.get("dirty") is False:
        commit += " (clean)"
    software = ", ".join(
        f"{name} {packages[name]}" for name in ("torch", "numpy") if packages.get(name)
    )
    gpus = machine.get("gpus") or []
    if gpus:
        hardware = f"{len(gpus)}× {gpus[0]['name']} ({gpus[0]['memory_gib']} GiB), CUDA " + (
            f"{machine.get('cuda')}, cuDNN {machine.get('cudnn')}"
        )
    else:
        hardware = "no GPU"
    flags = [f"{settings.get('threads', '?')} torch thread(s)"]
    on = settings.get("deterministic_algorithms")
    flags.append(f"deterministic algorithms {'on' if on else 'off'}")
    if gpus:
        flags.append("TF32 on" if settings.get("tf32_matmul") else "TF32 off")
    data = ", ".join(
        f"{name} {_short(entry.get('sha256'), 8)}"
        for name, entry in (record.get("datasets") or {}).items()
        if isinstance(entry, Mapping)
    )
    parts = [
        f"bmssl-harness {code.get('version') or '?'} at {commit}",
        f"Python {(record.get('python') or {}).get('version', '?')}, {software}",
        f"{machine.get('cpu', '?')} ({machine.get('cpu_cores', '?')} cores), {hardware}",
        ", ".join(flags),
    ]
    if data:
        parts.append(f"data {data}")
    return "Provenance: " + "; ".join(parts) + " (full record in the JSON)."


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of scalars kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(record, Mapping):
        if not record and prefix:
            out[prefix.rstrip(".")] = {}
        for key, value in record.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(record, list) and any(isinstance(v, (Mapping, list)) for v in record):
        for i, value in enumerate(record):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    out[prefix.rstrip(".")] = record
    return out


#: what varies from run to run of the same result (left out of :func:`differences`)
VOLATILE = ("created_at", "started_at", "wall_time_s", "command.cwd")


def differences(
    a: Mapping[str, Any], b: Mapping[str, Any], skip: Iterable[str] = VOLATILE
) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` of every flattened key where two records differ."""
    skipped = tuple(skip)
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [
        (k, fa.get(k), fb.get(k))
        for k in keys
        if fa.get(k) != fb.get(k) and not any(k == s or k.startswith(s + ".") for s in skipped)
    ]


def machine_kind(record: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree for a CPU result to repeat bit for bit: CPU model and architecture,
    torch and numpy versions, Python version."""
    machine = record.get("machine") or {}
    packages = record.get("packages") or {}
    return {
        "cpu": machine.get("cpu"),
        "arch": machine.get("arch"),
        "torch": packages.get("torch"),
        "numpy": packages.get("numpy"),
        "python": (record.get("python") or {}).get("version"),
    }
