"""Marks of a results table: seed-level tests per column, Holm across the table, power lines.

Each column's rows are compared pairwise with the paired t-test across seeds
(:func:`reproduce.inference.compare_rows`); Holm's step-down adjustment then runs over every
comparison of the table at once (:func:`reproduce.multiplicity.adjust_table`: each unordered pair
of rows once per column), so ▲/▼ (against the reference row) and bold (better than every other
row) control the family-wise error rate of the whole table at ``alpha``. Under the table go the
reason when there can be no test (one seed) and the power of the comparisons with the reference:
the smallest true difference each detects with 80% power at the family's Holm level, given the
seed spread it observed, and the seeds that would detect 1 and 2 points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reproduce.inference import ALPHA, Comparisons, compare_rows
from reproduce.multiplicity import adjust_table
from reproduce.tables import Table

#: ``by_column[column][row]``: that row's per-seed values (episode accuracies, or one metric)
ByColumn = Mapping[str, Mapping[str, Sequence[np.ndarray]]]


def mark_table(
    table: Table, by_column: ByColumn, reference: str, alpha: float = ALPHA
) -> dict[str, Comparisons]:
    """Test, adjust, mark and annotate ``table``; returns the adjusted comparisons per column."""
    raw = {column: compare_rows(rows, alpha=alpha) for column, rows in by_column.items()}
    adjusted = adjust_table(raw, alpha)
    for column, comparisons in adjusted.items():
        table.annotate(column, comparisons, reference=reference)
    members = [r for c in adjusted.values() for (a, b), r in c.items() if r["in_family"] and a < b]
    size = max((r.get("family_size", 0) for r in members), default=0)
    table.test = (
        f"two-sided paired t-test across seeds, Holm-adjusted p < {alpha:g} over the table's "
        f"{size} comparison(s)"
    )
    table.footer += footer_lines(adjusted, reference, alpha)
    return adjusted


def _median(values: list[float]) -> float:
    return float(np.median(values))


def footer_lines(adjusted: Mapping[str, Comparisons], reference: str, alpha: float) -> list[str]:
    """Why a table has no marks (when it cannot), and the power of its reference comparisons."""
    against = [r for c in adjusted.values() for (a, b), r in c.items() if b == reference]
    untestable = [r for r in against if not r["testable"]]
    lines = []
    if against and len(untestable) == len(against):
        reasons = sorted({r["reason"] for r in untestable})
        lines.append(
            "No ▲/▼ or bold: " + "; ".join(reasons) + " (run 3 or more seeds, e.g. --seeds 5)."
        )
        return lines
    mdes = [r["mde_family"] for r in against if r.get("mde_family") is not None]
    if not mdes:
        return lines
    size = max(r.get("family_size", 1) for r in against)
    seeds = against[0]["seeds"]
    needed = {
        effect: [r["seeds_needed_family"][effect] for r in against if r["testable"]]
        for effect in ("1", "2")
    }
    lines.append(
        f"Power ({seeds} seeds, vs {reference}, 80% at the Holm level α/m = {alpha:g}/{size}): "
        f"the smallest difference these tests detect is {_span(mdes)} points at the seed spread "
        "each observed; detecting 1 / 2 points "
        f"would take {_seeds_text(needed['1'])} / {_seeds_text(needed['2'])} seeds (median over "
        "cells)."
    )
    return lines


def _span(mdes: list[float]) -> str:
    """``lo–hi (median m)``, or the one value when they are all the same."""
    lo, hi = _points(min(mdes)), _points(max(mdes))
    return lo if lo == hi else f"{lo}–{hi} (median {_points(_median(mdes))})"


def _points(value: float) -> str:
    """An effect in points of accuracy; beyond the 100-point scale it says so."""
    return f"{value:.1f}" if value <= 100 else ">100"


def _seeds_text(values: list[Any]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "over 1000"
    text = f"{int(np.median(known))}"
    return text + (" (some over 1000)" if len(known) < len(values) else "")
