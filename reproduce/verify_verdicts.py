"""``python -m reproduce verify``'s comparison of a retrained cell with the stored one
(:mod:`reproduce.verify`): bit for bit (:func:`same_results`, on the same kind of machine:
:func:`expect_identical`), else each accuracy within the half-width of its table cell's 95%
interval across seeds (:func:`judge`, which returns the cell's :class:`Verdict`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: cell keys whose values are not results (settings, or times that vary run to run)
NOT_RESULTS = frozenset({"config", "fingerprint"})


def result_numbers(value: Any) -> Any:
    """A cell's results as plain JSON: settings and times (keys ending in ``_s``) left out."""
    if isinstance(value, Mapping):
        return {
            str(k): result_numbers(v)
            for k, v in value.items()
            if k not in NOT_RESULTS and not str(k).endswith("_s")
        }
    if isinstance(value, (list, tuple)):
        return [result_numbers(v) for v in value]
    return value


def canonical(cell: Any) -> str:
    """A cell's results (:func:`result_numbers`) as canonical JSON text."""
    return json.dumps(result_numbers(json.loads(json.dumps(cell, default=str))), sort_keys=True)


def same_results(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two cells hold the same results, bit for bit (through a JSON round trip)."""
    return canonical(a) == canonical(b)


def headline(cell: Mapping[str, Any]) -> dict[str, float]:
    """The cell's values as the table shows them: ``{"digits 5w1s": accuracy, ...}`` (few-shot
    cells) or ``{"digits top-1": %, ...}`` (BiSSL cells)."""
    from reproduce.bissl_report import METRIC_NAMES

    dataset = cell.get("dataset")
    if isinstance(cell.get("cells"), list):
        return {f"{dataset} {n}w{k}s": float(r["mean"]) for n, k, r in cell["cells"]}
    metrics = cell.get("metrics") or {}
    return {
        f"{dataset} {name}": float(metrics[f"test_{key}"])
        for key, name in METRIC_NAMES.items()
        if isinstance(metrics.get(f"test_{key}"), (int, float))
    }


def row_label(name: str, data: Mapping[str, Any], row: str) -> str:
    """The table's label of a cached row (``simclr`` -> ``SimCLR``)."""
    labels = (data.get("meta") or {}).get("labels")
    if isinstance(labels, Mapping) and row in labels:
        return str(labels[row])
    if name == "bissl_table":
        from reproduce.bissl_report import LABELS

        return LABELS.get(row, row)
    return row


def runs_on_cpu(device: Any, gpu_count: int) -> bool:
    device = str(device or "auto")
    return device == "cpu" or (device == "auto" and gpu_count == 0)


def expect_identical(stored: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether this machine must repeat the stored cells bit for bit, and why (or why not)."""
    from bmssl import provenance

    if not stored:
        return False, "the table records no provenance (made before it was recorded)"
    mine, theirs = provenance.machine_kind(provenance.collect()), provenance.machine_kind(stored)
    changed = [f"{k} {theirs[k]} -> {mine[k]}" for k in mine if mine[k] != theirs[k]]
    if changed:
        return False, "another kind of machine: " + ", ".join(changed)
    return True, (
        f"same kind of machine ({mine['cpu']}, torch {mine['torch']}, numpy {mine['numpy']}, "
        f"Python {mine['python']})"
    )


@dataclass
class Verdict:
    name: str
    status: str  # "identical", "within", "mismatch"
    text: str
    seconds: float


def judge(
    name: str,
    stored: dict[str, Any],
    fresh: dict[str, Any],
    tolerance: Mapping[str, float | None],
    exact: bool,
    seconds: float,
) -> Verdict:
    """One cell's verdict (see the module docstring); ``tolerance``: each column's half-width."""
    if same_results(stored, fresh):
        return Verdict(name, "identical", "bit-identical", seconds)
    before, after = headline(stored), headline(fresh)
    parts, beyond = [], False
    for column in before:
        old, new = before[column], after.get(column, math.nan)
        half = tolerance.get(column)
        delta = new - old
        inside = half is not None and math.isfinite(delta) and abs(delta) <= half
        beyond |= not inside
        bound = "no seed interval" if half is None else f"±{half:.2f}"
        parts.append(f"{column} {old:.2f} -> {new:.2f} (Δ {delta:+.2f}, {bound})")
    detail = "; ".join(parts) or "the results differ"
    if exact:
        return Verdict(
            name,
            "mismatch",
            f"MISMATCH: not bit-identical on the same kind of machine: {detail}",
            seconds,
        )
    if beyond or not before:
        return Verdict(name, "mismatch", f"MISMATCH beyond the seed interval: {detail}", seconds)
    return Verdict(name, "within", f"within the seed interval: {detail}", seconds)
