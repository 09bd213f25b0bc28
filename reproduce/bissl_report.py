"""The BiSSL table from its cells: per path and downstream metric the mean over seeds ± the 95%
t-interval, and the paired difference BiSSL − baseline (same seeds) with its paired t-test across
seeds, Holm-adjusted over the table's columns (:mod:`reproduce.significance`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reproduce.driver import Cells
from reproduce.profiles import BiSSLTableProfile
from reproduce.significance import mark_table
from reproduce.stats import t_interval
from reproduce.tables import Table, format_difference, format_mean_ci

LABELS = {"baseline": "Baseline (SimCLR → fine-tune)", "bissl": "BiSSL"}
DIFF_LABEL = "Δ BiSSL − baseline (paired)"
METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "map11": "mAP(11pt)"}


def metric_keys(profile: BiSSLTableProfile, multilabel: bool) -> list[str]:
    """Reported test metrics: the profile's, with top-1 replaced by mAP for multi-label sets."""
    return [("map11" if (m == "top1" and multilabel) else m) for m in profile.metrics]


def is_multilabel(plan: Any, dataset: str) -> bool:
    from bissl.downstream import load_downstream
    from reproduce.bissl_table import cell_config

    config = cell_config(plan, dataset, plan.profile.seeds[0])
    test = load_downstream(
        dataset, config.data_root, "test", config.image_size, config.dataset_options
    )
    return bool(test.multilabel)


def per_seed_metrics(plan: Any, cells: Cells) -> dict[str, dict[str, list[float]]]:
    """``values[method][column]``: the test metric of each seed, in seed order."""
    values: dict[str, dict[str, list[float]]] = {}
    for dataset in plan.datasets:
        keys = metric_keys(plan.profile, is_multilabel(plan, dataset))
        for method in plan.methods:
            for key in keys:
                column = f"{dataset} {METRIC_NAMES[key]}"
                values.setdefault(method, {})[column] = [
                    float(cells[method, f"{dataset}__seed{s}"]["metrics"].get(f"test_{key}", "nan"))
                    for s in plan.profile.seeds
                ]
    return values


def budget_text(plan: Any, cells: Cells, method: str) -> str:
    """Mean image-views through a backbone (:mod:`bissl.budget`) and wall seconds of a path."""
    runs = [
        cells[method, f"{d}__seed{s}"]["metrics"] for d in plan.datasets for s in plan.profile.seeds
    ]
    views = np.mean([m.get("views_seen", float("nan")) for m in runs])
    seconds = np.mean([m.get("wall_s", float("nan")) for m in runs])
    return f"{views:,.0f} views, {seconds:.1f} s"


def assemble(plan: Any, cells: Cells, elapsed: float) -> Table:
    """Build, write and return the BiSSL table of ``plan`` (:class:`BiSSLTablePlan`)."""
    profile = plan.profile
    values = per_seed_metrics(plan, cells)
    columns = list(next(iter(values.values())))
    seeds = ", ".join(map(str, profile.seeds))
    table = Table(
        f"BiSSL vs baseline ({profile.profile} profile): test %, mean ± 95% t-interval over "
        f"seeds {seeds}",
        columns,
    )
    for method in plan.methods:
        for column, vals in values[method].items():
            mean, half = t_interval(vals)
            raw = {"mean": mean, "half_width": half, "per_seed": vals}
            table.set(LABELS[method], column, format_mean_ci(mean, half), raw=raw)
        table.notes[LABELS[method]] = "this harness"
    table.extra_columns["budget (per run)"] = {
        LABELS[m]: budget_text(plan, cells, m) for m in plan.methods
    }
    if {"baseline", "bissl"} <= set(plan.methods):
        by_column = {
            column: {LABELS[m]: [np.asarray([v]) for v in values[m][column]] for m in plan.methods}
            for column in columns
        }
        adjusted = mark_table(table, by_column, LABELS["baseline"])
        for column in columns:
            result = adjusted[column][LABELS["bissl"], LABELS["baseline"]]
            table.set(DIFF_LABEL, column, format_difference(result["mean"], result["half_width"]))
            table.raw.setdefault(DIFF_LABEL, {})[column] = result
        table.notes[DIFF_LABEL] = "paired by seed, 95% t-interval"
    table.write(
        plan.out, "bissl_table",
        meta={"profile": profile.profile, "seeds": profile.seeds, "wall_time_s": elapsed,
              "config": profile.config, "overrides": plan.overrides,
              "datasets": {d: profile.datasets[d] for d in plan.datasets}},
    )  # fmt: skip
    return table
