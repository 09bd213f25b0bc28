"""Search results as files: a Markdown and CSV summary, accuracy plots and the best config.

Everything here works on :class:`TrialRecord` lists, so it does not need Ray; :func:`load_records`
reads them from an experiment directory (finished or not). Files are written atomically
(``bmssl.io``): a report that a killed driver leaves behind is the previous one, never half of one.

Which trial is "best": the highest final ``val_acc`` among the trials that trained for the
largest step count any trial reached. ASHA stops trials at lower rungs because they were worse
there, so an early, noisy accuracy of a stopped trial must not beat a fully trained one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.io import atomic_write, write_text

#: Tune's trial statuses that mean the trial will not run again
FINAL_STATUSES = ("TERMINATED", "ERROR")


@dataclass
class TrialRecord:
    """One trial: searched params, seed, status, last metrics and every reported validation."""

    trial_id: str
    status: str
    params: dict[str, Any]
    seed: int | None
    last: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def val_acc(self) -> float | None:
        value = self.last.get("val_acc")
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def step(self) -> int:
        return int(self.last.get("step", 0) or 0)

    @property
    def peak_val_acc(self) -> float | None:
        accs = [h["val_acc"] for h in self.history if _finite(h.get("val_acc"))]
        return max(accs) if accs else self.val_acc


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put each file."""

    directory: Path
    summary_md: Path
    trials_csv: Path
    history_csv: Path
    plot_png: Path
    best_yaml: Path | None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_records(experiment_dir: str | Path, axis_names: Sequence[str]) -> list[TrialRecord]:
    """Every trial of the Tune experiment at ``experiment_dir``, including never-started ones."""
    from ray.tune import ExperimentAnalysis

    experiment_dir = Path(experiment_dir).expanduser().resolve()
    with quiet_missing_results():
        analysis = ExperimentAnalysis(str(experiment_dir))
    records = []
    for trial in analysis.trials:
        config = dict(trial.config or {})
        last = {
            k: float(v)
            for k, v in (trial.last_result or {}).items()
            if _finite(v) and (k in _METRIC_KEYS or k.startswith("val_"))
        }
        records.append(
            TrialRecord(
                trial_id=str(trial.trial_id),
                status=str(trial.status),
                params={name: config.get(name) for name in axis_names},
                seed=config.get("seed"),
                last=last,
                history=_history(Path(experiment_dir) / Path(str(trial.path)).name / "result.json"),
                error=_error_text(trial),
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


@contextlib.contextmanager
def quiet_missing_results() -> Iterator[None]:
    """Silence Tune's warning about trials without result files: trials that never started
    (pending when a search was interrupted) have none, and that is expected."""
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


#: metrics copied out of Tune's results (Tune adds bookkeeping keys we leave out)
_METRIC_KEYS = ("val_acc", "val_ci95", "step", "loss", "time_s", "training_iteration")


def _history(result_json: Path) -> list[dict[str, float]]:
    """Every result a trial reported, one per step (a never-started trial has none)."""
    if not result_json.is_file():
        return []
    by_step: dict[int, dict[str, float]] = {}
    for line in result_json.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed writer left half-written
        if not isinstance(row, dict) or not _finite(row.get("step")):
            continue
        # A trial resumed from an older checkpoint reports some steps twice; keep the latest.
        by_step[int(row["step"])] = {
            k: float(v)
            for k, v in row.items()
            if _finite(v) and (k in _METRIC_KEYS or k.startswith("val_"))
        }
    return [by_step[s] for s in sorted(by_step)]


def _error_text(trial: Any) -> str | None:
    if str(trial.status) != "ERROR":
        return None
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed (no error file)"


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The best trial (see the module docstring), or None when no trial reported."""
    scored = [r for r in records if r.val_acc is not None]
    if not scored:
        return None
    budget = max(r.step for r in scored)
    full = [r for r in scored if r.step == budget]
    return max(full, key=lambda r: r.val_acc or -math.inf)


def format_value(value: Any) -> str:
    """Compact text of a parameter value for tables and tick labels."""
    if value is None:
        return "all"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(
    records: Sequence[TrialRecord],
    plan: Mapping[str, Any],
    axes: Sequence[Any],
    directory: str | Path,
    best_config_yaml: str | None,
) -> ReportPaths:
    """Write summary.md, trials.csv, history.csv, accuracy_vs_params.png, best_config.yaml.

    ``plan`` is the search's stored spec (method, space, scheduler, ...); ``axes`` its
    :class:`tuning.spaces.Axis` list; ``best_config_yaml`` the trainer config of the best trial
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
    write_plot(paths.plot_png, records, axes, best)
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


def summary_markdown(
    records: Sequence[TrialRecord],
    plan: Mapping[str, Any],
    axes: Sequence[Any],
    best: TrialRecord | None,
    paths: ReportPaths,
) -> str:
    """The Markdown summary: the search, the best config, then a table of every trial."""
    names = [a.name for a in axes]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    status_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
    lines = [
        f"# Search `{plan.get('name')}`: {plan.get('method')} / {plan.get('space')}",
        "",
        f"- space: {plan.get('space_description', '')}",
        f"- search: {plan.get('search')}, scheduler: {plan.get('scheduler')}, "
        f"samples: {plan.get('num_samples')}, seeds: "
        f"{plan.get('seeds') or 'one drawn per trial (search seed ' + str(plan.get('search_seed')) + ')'}",
        f"- trials: {len(records)} ({status_text})",
        f"- wall time: {_wall_text(plan)}",
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
        lines.append("")
        lines += ["| parameter | value |", "|---|---|"]
        lines += [
            f"| {a.title} (`{a.name}`) | {format_value(best.params.get(a.name))} |" for a in axes
        ]
        lines.append(f"| seed | {best.seed} |")
        if paths.best_yaml is not None:
            lines += ["", f"Full trainer config: `{paths.best_yaml.name}`."]
    lines += ["", f"![accuracy against each searched parameter]({paths.plot_png.name})", ""]
    lines += ["## Trials", ""]
    metric_cols = [m for m in ("val_acc", "val_ci95", "loss") if any(m in r.last for r in records)]
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
    lines += [
        "",
        f"Every trial's final metrics: `{paths.trials_csv.name}`; every validation of every "
        f"trial: `{paths.history_csv.name}`.",
        "",
    ]
    return "\n".join(lines)


def _wall_text(plan: Mapping[str, Any]) -> str:
    sessions = plan.get("sessions") or []
    if not sessions:
        return "unknown"
    total = sum(float(s.get("wall_s", 0.0)) for s in sessions)
    if len(sessions) == 1:
        return f"{total:.1f} s"
    parts = " + ".join(f"{float(s.get('wall_s', 0.0)):.1f}" for s in sessions)
    return f"{total:.1f} s over {len(sessions)} driver sessions ({parts} s)"


def write_plot(
    path: str | Path,
    records: Sequence[TrialRecord],
    axes: Sequence[Any],
    best: TrialRecord | None,
) -> Path:
    """Final val_acc against each searched parameter (one panel per axis), as a PNG.

    Filled markers: trials that trained for the full budget; hollow: stopped early (ASHA) or
    unfinished. Error bars are the 95% half-widths the trainer reports; the star is the best.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in records if r.val_acc is not None]
    budget = max((r.step for r in scored), default=0)
    fig, panels = plt.subplots(
        1, max(1, len(axes)), figsize=(4.2 * max(1, len(axes)), 3.4), squeeze=False
    )
    for panel, axis in zip(panels[0], axes):
        positions, ticks = _positions(axis, scored)
        for r in scored:
            x = positions(r.params.get(axis.name))
            full = r.step == budget
            panel.errorbar(
                x,
                r.val_acc,
                yerr=r.last.get("val_ci95"),
                fmt="o",
                color="C0",
                markerfacecolor="C0" if full else "white",
                alpha=0.85,
                capsize=2,
            )
        if best is not None:
            panel.plot(
                positions(best.params.get(axis.name)),
                best.val_acc,
                marker="*",
                markersize=16,
                color="C3",
                linestyle="none",
                label="best",
            )
            panel.legend(loc="best", fontsize=8)
        if axis.scale == "log":
            panel.set_xscale("log")
        if ticks is not None:
            panel.set_xticks(ticks[0], ticks[1])
            panel.set_xlim(-0.5, len(ticks[0]) - 0.5)
        panel.set_xlabel(axis.title)
        panel.set_ylabel("validation accuracy (%)")
        panel.grid(alpha=0.3)
    if not axes:
        panels[0][0].set_axis_off()
    fig.suptitle(f"{len(scored)} trials; filled = trained {budget} steps", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


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
