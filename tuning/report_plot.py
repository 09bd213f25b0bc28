"""The report's figure: final ``val_acc`` against each searched parameter, one panel per axis.

Every trial is a dot (hollow when stopped early or unfinished), arms with several seeds get their
mean ± standard deviation beside the dots, single trials the trainer's 95% episode interval, and
a star marks the best trial. Written atomically (``bmssl.io``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bmssl.io import atomic_write
from tuning.records import Arm, TrialRecord, full_budget, group_arms

METRIC_LABEL = "validation accuracy (%)"


def format_value(value: Any) -> str:
    """Compact text of a parameter value for tables and tick labels."""
    if value is None:
        return "all"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def has_seeds(arms: Sequence[Arm]) -> bool:
    """Whether some arm ran with several seeds (one configuration, several trials)."""
    return any(len({r.seed for r in a.trials}) > 1 for a in arms)


def write_plot(
    path: str | Path,
    records: Sequence[TrialRecord],
    axes: Sequence[Any],
    best: TrialRecord | None,
    ylabel: str = METRIC_LABEL,
) -> Path:
    """Final val_acc against each searched parameter (one panel per axis), as a PNG.

    Every trial is a dot: filled when it trained the full budget, hollow when it was stopped
    early (ASHA) or is unfinished. Arms with several seeds get their mean ± standard deviation
    across seeds beside the dots; single trials keep the 95% episode interval the trainer
    reports as an error bar. The star is the best trial.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in records if r.val_acc is not None]
    budget = full_budget(records)
    arms = group_arms(records)
    seeded = has_seeds(arms)
    fig, panels = plt.subplots(
        1, max(1, len(axes)), figsize=(4.6 * max(1, len(axes)), 3.6), squeeze=False
    )
    for panel, axis in zip(panels[0], axes):
        _draw_panel(panel, axis, scored, arms, best, budget, seeded)
        panel.set_ylabel(ylabel)
    if not axes:
        panels[0][0].set_axis_off()
    fig.suptitle(f"{len(scored)} trials; filled = trained {budget} steps", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def _draw_panel(
    panel: Any,
    axis: Any,
    scored: Sequence[TrialRecord],
    arms: Sequence[Arm],
    best: TrialRecord | None,
    budget: int,
    seeded: bool,
) -> None:
    """One axis's panel: the trials, the arms' means, the best trial, ticks and labels."""
    positions, ticks = _positions(axis, scored)
    offset = _jitter(axis, arms) if seeded else (lambda r: 0.0)
    for r in scored:
        full = r.step == budget
        panel.errorbar(
            _shift(axis, positions(r.params.get(axis.name)), offset(r)),
            r.val_acc,
            yerr=None if seeded else r.last.get("val_ci95"),
            fmt="o",
            color="C0",
            markerfacecolor="C0" if full else "white",
            alpha=0.8,
            markersize=5,
            capsize=2,
            label="each seed" if seeded else "each trial",
        )
    if seeded:
        for arm in arms:
            if arm.mean is None:
                continue
            x = _shift(axis, positions(arm.params.get(axis.name)), 0.14)
            panel.errorbar(
                x, arm.mean, yerr=arm.sd or 0.0, fmt="D", color="black", markersize=5,
                capsize=4, elinewidth=1.5, label="mean ± s.d. across seeds",
            )  # fmt: skip
    if best is not None:
        panel.plot(
            _shift(axis, positions(best.params.get(axis.name)), offset(best)),
            best.val_acc,
            marker="*",
            markersize=15,
            color="C3",
            linestyle="none",
            label="best",
        )
    handles, labels = panel.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    panel.legend(unique.values(), unique.keys(), loc="best", fontsize=7)
    if axis.scale == "log":
        panel.set_xscale("log")
    if ticks is not None:
        panel.set_xticks(ticks[0], ticks[1])
        panel.set_xlim(-0.5, len(ticks[0]) - 0.5)
    panel.set_xlabel(axis.title)
    panel.grid(alpha=0.3)


def _shift(axis: Any, x: float, offset: float) -> float:
    """``x`` moved by ``offset`` category widths (categories only: numeric axes keep x)."""
    return x + offset if axis.scale == "category" else x


def _jitter(axis: Any, arms: Sequence[Arm]) -> Callable[[TrialRecord], float]:
    """Spread the seeds of an arm side by side (left of its mean marker)."""
    where: dict[str, float] = {}
    for arm in arms:
        n = len(arm.trials)
        for i, r in enumerate(sorted(arm.trials, key=lambda t: (t.seed is None, t.seed or 0))):
            where[r.trial_id] = -0.24 + (0.22 * i / (n - 1) if n > 1 else 0.11)
    return lambda r: where.get(r.trial_id, 0.0)


def _positions(
    axis: Any, records: Sequence[TrialRecord]
) -> tuple[Callable[[Any], float], tuple[list[int], list[str]] | None]:
    """Map a parameter value to an x position; categories get evenly spaced, labelled ticks."""
    if axis.scale != "category":
        return (lambda value: float(value)), None
    values = list(axis.grid)
    for r in records:
        if r.params.get(axis.name) not in values:
            values.append(r.params.get(axis.name))
    index: dict[str, int] = {}
    for v in values:
        index.setdefault(format_value(v), len(index))
    return (lambda value: float(index[format_value(value)])), (list(index.values()), list(index))
