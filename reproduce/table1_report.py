"""Table 1 from its cells: the few-shot table, the training budgets, published rows, figures.

Cells, intervals and marks as :mod:`reproduce.fewshot_report` makes them; the ``budget`` column
gives each method's mean image-views and training seconds per run; paper-style profiles add the
published rows of ``references/table1.yaml`` beside the harness's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reproduce.fewshot_report import Cells, EvaluatedSet, budget_text, fewshot_table
from reproduce.tables import Table

REFERENCES = Path(__file__).resolve().parent / "references" / "table1.yaml"


def assemble(plan: Any, cells: Cells, elapsed: float) -> Table:
    """Build, write and return the table of ``plan`` (see :class:`reproduce.table1.Table1Plan`)."""
    from bmssl.methods import get_method
    from reproduce.figures import accuracy_vs_shots, learning_curves

    profile, methods, datasets = plan.profile, plan.methods, plan.datasets
    seeds = list(profile.seeds)
    labels = {m: get_method(m).label for m in methods}
    sets = [EvaluatedSet(d, d, tuple(profile.cells(d))) for d in datasets]
    title = (
        f"Table 1 ({profile.profile} profile): {profile.classifier} classifier, accuracy % "
        f"(mean over {len(seeds)} seed(s) ± 95% t-interval across seeds), {profile.episodes} "
        "episodes per seed"
    )
    table, summary = fewshot_table(title, methods, labels, sets, seeds, cells, profile.reference)
    table.extra_columns["budget (per run)"] = {
        labels[m]: budget_text(cells, m, datasets, seeds) for m in methods
    }
    for ref in references(profile, table.columns):
        for col, value in ref["cells"].items():
            if col in table.columns:
                table.set(ref["method"], col, f"{value:.2f}")
        table.notes[ref["method"]] = ref["source"]

    # Every method keeps its place (and colour) even without a curve (random init), so the two
    # figures colour the methods alike.
    curves = {
        d: {labels[m]: [cells[m, f"{d}__seed{s}"]["curve"] for s in seeds] for m in methods}
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
            "labels": labels,
            "curves": curves,
        },
    )
    accuracy_vs_shots(summary, plan.out / "accuracy_vs_shots.png")
    learning_curves(curves, plan.out / "learning_curves.png")
    return table


def references(profile: Any, columns: list[str]) -> list[dict[str, Any]]:
    """Published rows whose cells are in this table (paper-style profiles only)."""
    if profile.profile == "cpu":
        return []
    rows = yaml.safe_load(REFERENCES.read_text()) or []
    return [r for r in rows if set(r["cells"]) & set(columns)]
