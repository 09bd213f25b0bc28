"""A search's results as files: a Markdown and CSV summary, an accuracy plot and the best config.

Ray-free: everything works on :class:`tuning.records.TrialRecord` lists and the stored plan (the
JSON of :class:`tuning.plan.SearchPlan`). Files are written atomically (``bmssl.io``): a report
that a killed driver leaves behind is the previous one, never half of one.

When arms have several seeds (ablations run seeds 0 and 1 by default), the summary gives each
arm's mean, standard deviation and 95% t-interval across seeds, and the plot shows every seed
as a dot with the arm's mean ± standard deviation beside it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.io import write_text
from tuning.records import Arm, TrialRecord, best_arm, best_record, full_budget, group_arms
from tuning.report_plot import METRIC_LABEL, format_value, has_seeds, write_plot

__all__ = ["METRIC_LABEL", "ReportPaths", "format_value", "write_plot", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put each file."""

    directory: Path
    summary_md: Path
    trials_csv: Path
    history_csv: Path
    plot_png: Path
    best_yaml: Path | None


def write_report(
    records: Sequence[TrialRecord],
    plan: Mapping[str, Any],
    axes: Sequence[Any],
    directory: str | Path,
    best_config_yaml: str | None,
) -> ReportPaths:
    """Write summary.md, trials.csv, history.csv, accuracy_vs_params.png, best_config.yaml.

    ``plan`` is the search's stored spec (``SearchPlan.to_json()``); ``axes`` its
    :class:`tuning.spaces.Axis` list; ``best_config_yaml`` the method config of the best trial
    as YAML (None when no trial reported yet).
    """
    directory = Path(directory)
    names = [a.name for a in axes]
    best = best_record(records)
    paths = ReportPaths(
        directory=directory,
        summary_md=directory / "summary.md",
        trials_csv=directory / "trials.csv",
        history_csv=directory / "history.csv",
        plot_png=directory / "accuracy_vs_params.png",
        best_yaml=directory / "best_config.yaml" if best_config_yaml is not None else None,
    )
    write_text(paths.trials_csv, trials_csv(records, names, best))
    write_text(paths.history_csv, history_csv(records, names))
    write_plot(paths.plot_png, records, axes, best, plan.get("metric_label") or METRIC_LABEL)
    if paths.best_yaml is not None and best is not None:
        header = (
            f"# Best trial {best.trial_id} of search {plan.get('name')!r} "
            f"({plan.get('method')} / {plan.get('space')}): val_acc={best.val_acc:.4g} at step "
            f"{best.step}.\n"
        )
        write_text(paths.best_yaml, header + (best_config_yaml or ""))
    write_text(paths.summary_md, summary_markdown(records, plan, axes, best, paths))
    return paths


def _metric_columns(records: Sequence[TrialRecord]) -> list[str]:
    keys: list[str] = []
    for r in records:
        for k in r.last:
            if k not in keys and k not in ("step", "training_iteration"):
                keys.append(k)
    ordered = [k for k in ("val_acc", "val_ci95") if k in keys]
    return ordered + sorted(k for k in keys if k not in ordered)


def trials_csv(
    records: Sequence[TrialRecord], names: Sequence[str], best: TrialRecord | None
) -> str:
    """One row per trial: id, status, best flag, params, seed, step, final metrics, peak acc."""
    metrics = _metric_columns(records)
    header = ["trial_id", "status", "best", *names, "seed", "step", *metrics, "peak_val_acc"]
    header.append("error")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in records:
        writer.writerow(
            [
                r.trial_id,
                r.status,
                int(best is not None and r.trial_id == best.trial_id),
                *[_csv_value(r.params.get(n)) for n in names],
                "" if r.seed is None else r.seed,
                r.step if r.last else "",
                *[_csv_value(r.last.get(m)) for m in metrics],
                _csv_value(r.peak_val_acc),
                r.error or "",
            ]
        )
    return buf.getvalue()


def history_csv(records: Sequence[TrialRecord], names: Sequence[str]) -> str:
    """Every validation of every trial: trial id, params, seed, then the metrics at that step."""
    metrics: list[str] = []
    for r in records:
        for h in r.history:
            metrics.extend(k for k in h if k not in metrics and k != "step")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial_id", *names, "seed", "step", *metrics])
    for r in records:
        for h in r.history:
            writer.writerow(
                [
                    r.trial_id,
                    *[_csv_value(r.params.get(n)) for n in names],
                    "" if r.seed is None else r.seed,
                    int(h["step"]),
                    *[_csv_value(h.get(m)) for m in metrics],
                ]
            )
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _stat(value: float | None, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def summary_markdown(
    records: Sequence[TrialRecord],
    plan: Mapping[str, Any],
    axes: Sequence[Any],
    best: TrialRecord | None,
    paths: ReportPaths,
) -> str:
    """The Markdown summary: the search, the best configuration, the arms, every trial."""
    names = [a.name for a in axes]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    status_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
    seeds = plan.get("seeds")
    seed_text = (
        ", ".join(map(str, seeds))
        if seeds
        else f"one drawn per trial (search seed {plan.get('search_seed')})"
    )
    arms = group_arms(records)
    top = best_arm(records, arms)
    lines = [
        f"# Search `{plan.get('name')}`: {plan.get('method')} / {plan.get('space')}",
        "",
        f"- space: {plan.get('space_description', '')}",
        f"- metric: `val_acc`, {plan.get('metric_description', 'validation accuracy (%)')}",
        f"- search: {plan.get('search')}, scheduler: {plan.get('scheduler')}, "
        f"samples: {plan.get('num_samples')}, seeds: {seed_text}",
        f"- trials: {len(records)} ({status_text})",
        f"- wall time: {_wall_text(plan)}",
        *_provenance_lines(plan),
        "",
        "## Best configuration",
        "",
    ]
    if best is None:
        lines.append("No trial has reported a validation accuracy yet.")
    else:
        ci = best.last.get("val_ci95")
        acc = f"{best.val_acc:.2f}" + (f" ± {ci:.2f}" if ci is not None else "")
        lines.append(f"Trial `{best.trial_id}`: val_acc **{acc}** at step {best.step}.")
        if top is not None and top.n >= 2:
            lines.append(
                f"Its arm (the best mean across seeds): {top.mean:.2f} ± {top.sd:.2f} (s.d., "
                f"{top.n} seeds)."
            )
        lines.append("")
        lines += ["| parameter | value |", "|---|---|"]
        lines += [
            f"| {a.title} (`{a.name}`) | {format_value(best.params.get(a.name))} |" for a in axes
        ]
        lines.append(f"| seed | {best.seed} |")
        if paths.best_yaml is not None:
            lines += ["", f"Full method config: `{paths.best_yaml.name}`."]
    lines += ["", f"![accuracy against each searched parameter]({paths.plot_png.name})", ""]
    if has_seeds(arms):
        lines += _arm_table(arms, axes, top, full_budget(records))
    lines += _trials_table(records, names, best)
    lines += [
        "",
        f"Every trial's final metrics: `{paths.trials_csv.name}`; every validation of every "
        f"trial: `{paths.history_csv.name}`.",
        "",
    ]
    return "\n".join(lines)


def _trials_table(
    records: Sequence[TrialRecord], names: Sequence[str], best: TrialRecord | None
) -> list[str]:
    """The ``## Trials`` section: every trial, best val_acc first."""
    lines = ["## Trials", ""]
    metric_cols = [
        m
        for m in ("val_acc", "val_ci95", "bissl_val_acc", "loss")
        if any(m in r.last for r in records)
    ]
    header = ["trial", "status", *names, "seed", "step", *metric_cols, "peak val_acc"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    ranked = sorted(records, key=lambda r: (r.val_acc is None, -(r.val_acc or 0.0), r.trial_id))
    for r in ranked:
        mark = " ★" if best is not None and r.trial_id == best.trial_id else ""
        cells = [
            f"`{r.trial_id}`{mark}",
            r.status.lower() + (f" ({r.error})" if r.error else ""),
            *[format_value(r.params.get(n)) for n in names],
            "" if r.seed is None else str(r.seed),
            str(r.step) if r.last else "",
            *[format_value(r.last.get(m)) if m in r.last else "" for m in metric_cols],
            format_value(r.peak_val_acc) if r.peak_val_acc is not None else "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _arm_table(arms: Sequence[Arm], axes: Sequence[Any], top: Arm | None, budget: int) -> list[str]:
    """Each arm's mean, s.d., 95% t-interval, min and max of val_acc across its seeds."""
    header = [*[a.title for a in axes], "seeds", "mean val_acc", "s.d.", "95% CI (t)", "min", "max"]
    lines = [
        "## Arms",
        "",
        f"Statistics across the seeds of each arm that trained the full budget ({budget} steps); "
        "the interval is the 95% t-interval of the mean (wide with few seeds).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    ranked = sorted(arms, key=lambda a: (a.mean is None, -(a.mean or 0.0)))
    for arm in ranked:
        accs = arm.accs
        stopped = len(arm.trials) - arm.n
        seeds = f"{arm.n}" + (f" (+{stopped} not full)" if stopped else "")
        mark = " ★" if top is not None and arm is top else ""
        cells = [
            *[format_value(arm.params.get(a.name)) for a in axes],
            seeds,
            _stat(arm.mean) + mark,
            _stat(arm.sd),
            "" if arm.ci95 is None else f"± {arm.ci95:.2f}",
            _stat(min(accs) if accs else None),
            _stat(max(accs) if accs else None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _provenance_lines(plan: Mapping[str, Any]) -> list[str]:
    """The last driver session's provenance as one bullet (the record is in the spec JSON)."""
    sessions = plan.get("sessions") or []
    record = sessions[-1].get("provenance") if sessions else None
    if not record:
        return []
    from bmssl.provenance import summary_line

    text = summary_line(record).removeprefix("Provenance: ").removesuffix(".")
    text = text.replace(" (full record in the JSON)", "")
    return [f"- provenance: {text} (full record: `tuning_spec.json`, sessions)"]


def _wall_text(plan: Mapping[str, Any]) -> str:
    sessions = plan.get("sessions") or []
    if not sessions:
        return "unknown"
    total = sum(float(s.get("wall_s", 0.0)) for s in sessions)
    if len(sessions) == 1:
        return f"{total:.1f} s"
    parts = " + ".join(f"{float(s.get('wall_s', 0.0)):.1f}" for s in sessions)
    return f"{total:.1f} s over {len(sessions)} driver sessions ({parts} s)"
