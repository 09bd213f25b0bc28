"""The cross-domain table from its cells: the few-shot table of every target, the models'
training budgets (Table 1's), and the accuracy-per-target figure."""

from __future__ import annotations

from typing import Any

from reproduce.fewshot_report import Cells, EvaluatedSet, budget_text, fewshot_table
from reproduce.tables import Table


def assemble(plan: Any, cells: Cells, elapsed: float) -> Table:
    """Build, write and return the table of ``plan`` (:class:`reproduce.crossdomain.CrossDomainPlan`)."""
    from bmssl.methods import get_method
    from reproduce.figures import accuracy_per_target
    from reproduce.profiles import parse_cells

    profile, methods, seeds = plan.profile, plan.methods, plan.seeds
    labels = {m: get_method(m).label for m in methods}
    sets = [EvaluatedSet(t, t, tuple(parse_cells(o["cells"], t))) for t, o in plan.targets.items()]
    title = (
        f"Cross-domain few-shot ({profile.profile} profile): models trained on {profile.source} "
        f"(Table 1, {plan.table1.profile} profile), {profile.classifier} classifier, accuracy % "
        f"(mean over {len(seeds)} seed(s) ± 95% t-interval across seeds), {profile.episodes} "
        "episodes per seed"
    )
    table, summary = fewshot_table(title, methods, labels, sets, seeds, cells, plan.reference)
    table.extra_columns["budget (per run)"] = {
        labels[m]: budget_text(cells, m, list(plan.targets)[:1], seeds) for m in methods
    }
    table.write(
        plan.out,
        "crossdomain",
        meta={
            "profile": profile.profile, "table1_profile": plan.table1.profile,
            "source": profile.source, "episodes": profile.episodes, "seeds": seeds,
            "reference": plan.reference, "wall_time_s": elapsed, "labels": labels,
            "targets": {t: {**o, "root": plan.roots.get(t)} for t, o in plan.targets.items()},
            "skipped_targets": plan.skipped,
        },
    )  # fmt: skip
    accuracy_per_target(summary, plan.out / "accuracy_per_target.png")
    return table
