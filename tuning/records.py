"""What a search produced, read back from Tune's files: one :class:`TrialRecord` per trial, the
arms of the search (the trials that share a configuration and differ only in their seed) and the
best trial.

:func:`load_records` reads Tune's newest ``experiment_state-*.json`` as plain JSON and never
decodes the cloudpickled fields it holds (nor any other pickle), so a report of a search folder
someone else wrote (``python -m tuning report /shared/tune/...``) runs none of its code; only
:func:`quiet_missing_results` touches Ray. The rest works on record lists, so
:mod:`tuning.report` and the tests need no Ray.

Which trial is "best": among the trials that trained for the largest step count any trial
reached (ASHA stops trials at lower rungs because they were worse there, so an early, noisy
accuracy of a stopped trial must not beat a fully trained one), the arm with the highest mean
``val_acc`` across its seeds, and in that arm the seed with the highest ``val_acc``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bmssl.errors import UserError, shown
from tuning.storage import Location, text_reader

#: Tune's trial statuses that mean the trial will not run again
FINAL_STATUSES = ("TERMINATED", "ERROR")
#: metrics copied out of Tune's results besides ``*val_*`` and ``test_*`` (Tune adds bookkeeping
#: keys we leave out)
_METRIC_KEYS = ("step", "loss", "train_loss", "time_s", "training_iteration")


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

    @property
    def arm_key(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


@dataclass
class Arm:
    """The trials of one configuration (one per seed); statistics over the ``full`` ones, those
    that trained the search's full budget."""

    params: dict[str, Any]
    trials: list[TrialRecord]
    full: list[TrialRecord]

    @property
    def accs(self) -> list[float]:
        return [r.val_acc for r in self.full if r.val_acc is not None]

    @property
    def n(self) -> int:
        return len(self.accs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation across seeds (None below two seeds)."""
        return statistics.stdev(self.accs) if self.n >= 2 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% t-interval of the mean across seeds (None below two seeds)."""
        if self.sd is None:
            return None
        return t_quantile(self.n - 1) * self.sd / math.sqrt(self.n)


def t_quantile(dof: int, level: float = 0.975) -> float:
    """Student's t quantile (scipy's, which scikit-learn already brings)."""
    from scipy.stats import t

    return float(t.ppf(level, dof))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_metric(key: str) -> bool:
    return key in _METRIC_KEYS or "val_" in key or key.startswith("test_")


def full_budget(records: Sequence[TrialRecord]) -> int:
    """The largest step any trial reported a ``val_acc`` at (0 when none did)."""
    return max((r.step for r in records if r.val_acc is not None), default=0)


def group_arms(records: Sequence[TrialRecord]) -> list[Arm]:
    """The arms of ``records``, in order of first appearance."""
    budget = full_budget(records)
    arms: dict[str, Arm] = {}
    for r in records:
        arm = arms.setdefault(r.arm_key, Arm(dict(r.params), [], []))
        arm.trials.append(r)
        if r.val_acc is not None and r.step == budget:
            arm.full.append(r)
    return list(arms.values())


def best_arm(records: Sequence[TrialRecord], arms: Sequence[Arm] | None = None) -> Arm | None:
    """The arm with the highest mean ``val_acc`` over its fully trained seeds (one of ``arms``
    when given: ``group_arms(records)``)."""
    scored = [a for a in (arms or group_arms(records)) if a.mean is not None]
    return max(scored, key=lambda a: (a.mean or -math.inf, a.n)) if scored else None


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The best trial (see the module docstring), or None when no trial reported."""
    arm = best_arm(records)
    if arm is None:
        return None
    return max(arm.full, key=lambda r: r.val_acc or -math.inf)


def load_records(experiment: Location, axis_names: Sequence[str]) -> list[TrialRecord]:
    """Every trial of the Tune experiment at ``experiment``, including never-started ones
    (read as plain JSON: see the module docstring)."""
    read = text_reader(experiment)
    records = []
    for trial, metadata in _trial_states(experiment):
        found = trial.get("config")
        config: dict[str, Any] = found if isinstance(found, dict) else {}
        status = str(trial.get("status"))
        # As Tune restores it: a trial running when the driver stopped is pending again.
        status = "PENDING" if status == "RUNNING" else status
        trial_id = str(trial.get("trial_id"))
        trial_dir = str(trial.get("relative_logdir") or f"trial_{trial_id}").strip("/")
        result = metadata.get("last_result")
        last = {
            k: float(v)
            for k, v in (result if isinstance(result, dict) else {}).items()
            if _finite(v) and _is_metric(k)
        }
        seed = _plain(config.get("seed"))
        records.append(
            TrialRecord(
                trial_id=trial_id,
                status=status,
                params={name: _plain(config.get(name)) for name in axis_names},
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                last=last,
                history=history_rows(read(f"{trial_dir}/result.json")),
                error=_error_text(status, metadata, trial_dir, read),
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


def _trial_states(experiment: Location) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(trial state, run metadata)`` of every trial in the newest experiment state file (the
    one Tune would restore), decoded as plain JSON; ``[]`` when there is none yet."""
    from pyarrow import fs as pafs

    listed = experiment.fs.get_file_info(pafs.FileSelector(experiment.path, recursive=False))
    names = [
        info.base_name
        for info in listed
        if info.type == pafs.FileType.File
        and fnmatch.fnmatch(info.base_name, "experiment_state-*.json")
    ]
    if not names:
        return []
    try:
        state = json.loads(experiment.read_text(max(names)))
        pairs = [
            (json.loads(trial), json.loads(metadata))
            for trial, metadata in state.get("trial_data", [])
        ]
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise UserError(
            f"cannot read the Tune state {experiment.display(max(names))} ({type(err).__name__}:"
            f" {shown(str(err))}); the file is damaged"
        ) from None
    return [(t, m) for t, m in pairs if isinstance(t, dict) and isinstance(m, dict)]


def _plain(value: Any) -> Any:
    """A config value as JSON holds it; Tune's pickled stand-in for a value JSON cannot hold is
    never decoded (it would run code) and reads as its type's name."""
    if isinstance(value, dict) and value.get("_type") == "CLOUDPICKLE_FALLBACK":
        return "<pickled value>"
    return value


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


def history_rows(result_json: str | None) -> list[dict[str, float]]:
    """Every result a trial reported (the text of its ``result.json``), one per step.

    A trial resumed from an older checkpoint reports some steps twice, and a trial with a final
    stage (BiSSL's fine-tune) reports its last step twice; the latest report of a step wins.
    """
    if not result_json:
        return []
    by_step: dict[int, dict[str, float]] = {}
    for line in result_json.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed writer left half-written
        if not isinstance(row, dict) or not _finite(row.get("step")):
            continue
        by_step[int(row["step"])] = {
            k: float(v) for k, v in row.items() if _finite(v) and _is_metric(k)
        }
    return [by_step[s] for s in sorted(by_step)]


def _error_text(
    status: str, metadata: dict[str, Any], trial_dir: str, read: Callable[[str], str | None]
) -> str | None:
    """The last line of a failed trial's ``error.txt`` (Tune's text copy of the error)."""
    if status != "ERROR":
        return None
    name = metadata.get("error_filename")
    text = read(f"{trial_dir}/{name}") if isinstance(name, str) and "/" not in name else None
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed (no error file)"
