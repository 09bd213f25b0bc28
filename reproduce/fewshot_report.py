"""The few-shot tables' cells (Table 1, cross-domain): seed intervals, paired comparisons, marks.

Per cell: the mean over seeds of each seed's episode mean, ± the 95% t-interval across seeds
(the primary figure; the episode interval is in the JSON). Per pair of rows and column: the
paired t-test across seeds, Holm-adjusted over the whole table (:mod:`reproduce.significance`);
marks and bold follow the adjusted verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reproduce.significance import mark_table
from reproduce.stats import summarise_cell
from reproduce.tables import Table, format_mean_ci

#: cells[(method, "<set>__seed<s>")]: a cached cell of :func:`reproduce.fewshot_jobs.run_fewshot_job`
Cells = Mapping[tuple[str, str], dict[str, Any]]
#: summary[set][label][(n_way, k_shot)] = (mean, half_width), as the accuracy figure takes it
Summary = dict[str, dict[str, dict[tuple[int, int], tuple[float, float | None]]]]


@dataclass(frozen=True)
class EvaluatedSet:
    """One evaluation set's columns: shown as ``<name> <N>w<K>s``, cached under ``key``."""

    name: str
    key: str
    cells: tuple[tuple[int, int], ...]

    def column(self, n_way: int, k_shot: int) -> str:
        return f"{self.name} {n_way}w{k_shot}s"


def per_seed(
    cells: Cells, method: str, key: str, seeds: Sequence[int], n_way: int, k_shot: int
) -> list[np.ndarray]:
    """Per-episode accuracies of one method in one column, one array per seed."""
    out = []
    for seed in seeds:
        results = cells[method, f"{key}__seed{seed}"]["cells"]
        match = [r for n, k, r in results if (n, k) == (n_way, k_shot)]
        out.append(np.asarray(match[0]["accuracies"], dtype=np.float64))
    return out


def budget_text(cells: Cells, method: str, keys: Sequence[str], seeds: Sequence[int]) -> str:
    """Mean image-views and training seconds of a method's runs, or ``untrained``."""
    budgets = [cells[method, f"{key}__seed{s}"]["budget"] for key in keys for s in seeds]
    views = np.mean([b["views_seen"] for b in budgets])
    seconds = np.mean([b["train_s"] for b in budgets])
    return f"{views:,.0f} views, {seconds:.1f} s" if views else "untrained"


def fewshot_table(
    title: str,
    methods: Sequence[str],
    labels: Mapping[str, str],
    sets: Sequence[EvaluatedSet],
    seeds: Sequence[int],
    cells: Cells,
    reference: str,
) -> tuple[Table, Summary]:
    """The table of ``methods`` × every set's cells, with its comparisons and marks against
    ``reference``, and the summary the accuracy figure draws."""
    columns = [s.column(n, k) for s in sets for n, k in s.cells]
    table = Table(title, columns)
    summary: Summary = {}
    by_column: dict[str, dict[str, list[np.ndarray]]] = {}
    for evaluated in sets:
        for n, k in evaluated.cells:
            column = evaluated.column(n, k)
            by_label = {labels[m]: per_seed(cells, m, evaluated.key, seeds, n, k) for m in methods}
            for label, values in by_label.items():
                stats = summarise_cell(values)
                table.set(
                    label, column, format_mean_ci(stats["mean"], stats["half_width"]), raw=stats
                )
                summary.setdefault(evaluated.name, {}).setdefault(label, {})[n, k] = (
                    stats["mean"],
                    stats["half_width"],
                )
            by_column[column] = by_label
    mark_table(table, by_column, labels[reference])
    for m in methods:
        table.notes[labels[m]] = "this harness"
    return table, summary
