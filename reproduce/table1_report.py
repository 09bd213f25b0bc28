"""Table 1 from its cached cells: seed intervals, paired comparisons, marks, figures, files.

Per cell: the mean over seeds of each seed's episode mean, ± the 95% t-interval across seeds
(the primary figure; the episode interval is in the JSON). Per pair of rows and column: the mean
paired difference over seeds × shared episodes with a 95% hierarchical bootstrap interval
(:func:`reproduce.stats.paired_difference`). A cell is marked better/worse than the reference
row where that interval excludes zero, and bold where its row beats every other row so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from reproduce.stats import compare_rows, summarise_cell
from reproduce.tables import Table, format_mean_ci

Cells = Mapping[tuple[str, str, int], dict[str, Any] | None]


def _column(dataset: str, n_way: int, k_shot: int) -> str:
    return f"{dataset} {n_way}w{k_shot}s"


def _per_seed(cells: Cells, method: str, dataset: str, seeds: list[int], n: int, k: int):
    out = []
    for seed in seeds:
        cell = cells[method, dataset, seed]
        assert cell is not None, (method, dataset, seed)
        match = [r for nw, ks, r in cell["cells"] if (nw, ks) == (n, k)]
        out.append(np.asarray(match[0]["accuracies"], dtype=np.float64))
    return out


def _budget(cells: Cells, method: str, datasets: list[str], seeds: list[int]) -> str:
    budgets = [cells[method, d, s]["budget"] for d in datasets for s in seeds]  # type: ignore[index]
    views = np.mean([b["views_seen"] for b in budgets])
    seconds = np.mean([b["train_s"] for b in budgets])
    return f"{views:,.0f} views, {seconds:.1f} s" if views else "untrained"


def assemble(plan: Any, cells: Cells, elapsed: float) -> Table:
    """Build, write and return the table of ``plan`` (see :class:`reproduce.table1.Table1Plan`)."""
    from bmssl.methods import get_method
    from reproduce.figures import accuracy_vs_shots, learning_curves

    profile, methods, datasets, seeds = (
        plan.profile,
        plan.methods,
        plan.datasets,
        profile_seeds(plan),
    )
    labels = {m: get_method(m).label for m in methods}
    columns = [_column(d, n, k) for d in datasets for n, k in profile.cells(d)]
    table = Table(
        f"Table 1 ({profile.profile} profile): {profile.classifier} classifier, accuracy % "
        f"(mean over {len(seeds)} seed(s) ± 95% t-interval across seeds), {profile.episodes} "
        "episodes per seed",
        columns,
    )
    summary: dict[str, dict[str, dict[tuple[int, int], tuple[float, float]]]] = {}
    for dataset in datasets:
        for n, k in profile.cells(dataset):
            col = _column(dataset, n, k)
            per_method = {labels[m]: _per_seed(cells, m, dataset, seeds, n, k) for m in methods}
            for label, per_seed in per_method.items():
                stats = summarise_cell(per_seed)
                table.set(label, col, format_mean_ci(stats["mean"], stats["half_width"]), raw=stats)
                summary.setdefault(dataset, {}).setdefault(label, {})[n, k] = (
                    stats["mean"],
                    stats["half_width"],
                )
            table.annotate(col, compare_rows(per_method), reference=labels[profile.reference])
    table.extra_columns["budget (per run)"] = {
        labels[m]: _budget(cells, m, datasets, seeds) for m in methods
    }
    for m in methods:
        table.notes[labels[m]] = "this harness"
    for ref in references(profile, datasets, columns):
        for col, value in ref["cells"].items():
            if col in columns:
                table.set(ref["method"], col, f"{value:.2f}")
        table.notes[ref["method"]] = ref["source"]

    # Every method keeps its place (and colour) even without a curve (random init), so the two
    # figures colour the methods alike.
    curves = {
        d: {labels[m]: [cells[m, d, s]["curve"] for s in seeds] for m in methods}  # type: ignore[index]
        for d in datasets
    }
    table.write(
        plan.out,
        "table1",
        meta={
            "profile": profile.profile,
            "episodes": profile.episodes,
            "seeds": seeds,
            "reference": profile.reference,
            "wall_time_s": elapsed,
        },
    )
    accuracy_vs_shots(summary, plan.out / "accuracy_vs_shots.png")
    learning_curves(curves, plan.out / "learning_curves.png")
    return table


def profile_seeds(plan: Any) -> list[int]:
    return list(plan.profile.seeds)


def references(profile: Any, datasets: list[str], columns: list[str]) -> list[dict[str, Any]]:
    """Published rows whose cells are in this table (paper-style profiles only)."""
    if profile.profile == "cpu":
        return []
    from reproduce.table1 import HERE

    rows = yaml.safe_load((HERE / "references" / "table1.yaml").read_text()) or []
    return [r for r in rows if set(r["cells"]) & set(columns)]
