"""The search driver: resolve a request into a :class:`tuning.plan.SearchPlan`, store it, build
(or restore) the Tuner, run it, export the results.

A search lives in ``<out>/<name>`` (a directory, or a URI Ray accepts): Tune's experiment state
and trial directories (each with Tune's ``result.json``, ``progress.csv`` and TensorBoard events),
our ``tuning_spec.json`` (the plan, and one entry per driver session) and ``report/`` (see
:mod:`tuning.report`). ``--resume`` restores the Tune experiment from there with
:meth:`ray.tune.Tuner.restore`: finished trials keep their results, unfinished ones continue from
their last checkpoint, pending ones start.

Order of work, so that a refusal leaves nothing behind: every check of the request
(:func:`tuning.plan.make_plan`); for ``--resume`` a search that exists and whose pickled Tune
state this user's harness wrote (:mod:`tuning.trust`, before anything is unpickled); Ray and its
resources; only then the spec, the driver-side stage and the Tuner. A new search that fails
before its trials start (a refusal, a full disk, Ctrl-C in the BiSSL pretext stage) removes the
folders it created, unless the pretext stage left a checkpoint to resume from.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.errors import UserError
from bmssl.io import first_missing, removing
from tuning.plan import SearchPlan, SearchRequest, make_plan
from tuning.records import (
    FINAL_STATUSES,
    TrialRecord,
    best_record,
    load_records,
    quiet_missing_results,
)
from tuning.report import ReportPaths, write_report
from tuning.session import (
    check_resources,
    init_ray,
    new_tuner,
    quiet_output,
    silenced_stderr,
    trainable_of,
    trial_dirname,  # noqa: F401  (older searches' pickles name tuning.search.trial_dirname)
)
from tuning.storage import Location, location_of, resolve_storage
from tuning.trust import record_path, sign_stored, signing, verify

SPEC_FILE = "tuning_spec.json"
#: the file whose presence makes a folder a Tune experiment Tuner.restore can continue
TUNER_FILE = "tuner.pkl"
REPORT_DIR = "report"


@dataclass
class SearchOutcome:
    """What a driver session ended with. ``report`` holds the local files of the report; for
    remote storage they were uploaded to ``report_dir`` and the local copies are gone."""

    experiment: Location
    plan: SearchPlan
    records: list[TrialRecord]
    report: ReportPaths
    wall_s: float
    resumed: bool

    @property
    def experiment_dir(self) -> Path:
        """The experiment directory on this machine (local storage only)."""
        if self.experiment.local is None:
            raise ValueError(f"{self.experiment.uri} is not on this machine")
        return self.experiment.local

    @property
    def report_dir(self) -> Location:
        return self.experiment.child(REPORT_DIR)

    @property
    def unfinished(self) -> list[TrialRecord]:
        return [r for r in self.records if r.status not in FINAL_STATUSES]

    @property
    def interrupted(self) -> bool:
        return bool(self.unfinished)

    @property
    def best(self) -> TrialRecord | None:
        return best_record(self.records)


def run_search(request: SearchRequest) -> SearchOutcome:
    """Run (or resume) a search to the end or to an interrupt; always writes the report."""
    session_start = time.perf_counter()
    plan = make_plan(request)  # every check, before anything is written
    with quiet_output(request.quiet):
        if request.resume:
            storage = location_of(request.out)  # a resume creates no folder
            experiment = storage.child(plan.name)
            return _resume(request, plan, experiment, session_start)
        local = None if "://" in request.out else Path(request.out).expanduser()
        created = first_missing(local) if local is not None else None
        # removing() only takes away what this command created (here: a new --out).
        with removing(created):
            storage = resolve_storage(request.out)
        experiment = storage.child(plan.name)
        if created is None and experiment.local is not None:
            created = first_missing(experiment.local)
        return _start(request, plan, storage, experiment, created, session_start)


def _resume(
    request: SearchRequest, plan: SearchPlan, experiment: Location, session_start: float
) -> SearchOutcome:
    """Continue the search at ``experiment``: it must exist, have been started with the same
    settings, and hold only Tune state this user's harness wrote (:func:`tuning.trust.verify`)."""
    # Tune's own test (Tuner.can_restore: is there a tuner.pkl), without importing Ray for a refusal.
    if not experiment.is_file(TUNER_FILE):
        raise UserError(
            f"--resume: there is no search {plan.name!r} to resume in {experiment.display()} (no "
            "saved Tune state); check --out and --name, or run the command without --resume to "
            "start it"
        )
    plan = _stored_plan(experiment, plan)  # JSON: the settings must match
    verify(experiment, plan.name)  # before Tune unpickles anything of it
    from ray import tune

    started_ray = init_ray(request.address, request.num_cpus, request.quiet)
    try:
        cluster = check_resources(plan, bool(request.address), request.quiet)
        _write_spec(experiment, plan)
        with quiet_missing_results():
            tuner = tune.Tuner.restore(
                experiment.uri, trainable_of(plan), resume_unfinished=True, resume_errored=True
            )
        return _fit(tuner, experiment, plan, cluster, session_start, resumed=True)
    finally:
        _stop_ray(started_ray)


def _start(
    request: SearchRequest,
    plan: SearchPlan,
    storage: Location,
    experiment: Location,
    created: Path | None,
    session_start: float,
) -> SearchOutcome:
    """A new search; ``created`` is the outermost folder this command made for it (removed
    again, with everything in it, if the search fails before its trials start)."""
    from ray import tune

    if tune.Tuner.can_restore(experiment.uri):
        raise UserError(
            f"search {plan.name!r} already exists in {experiment.display()}; add --resume to "
            "continue it, or pass --name to start another"
        )
    shared = _shared_dir(experiment, plan.name)
    resumable = lambda: any(shared.rglob("*.pt"))  # noqa: E731  (a pretext stage's checkpoint)
    started_ray = False
    try:
        with removing(created, resumable):
            record_path(experiment)  # an untrustworthy record folder is refused before any work
            started_ray = init_ray(request.address, request.num_cpus, request.quiet)
            cluster = check_resources(plan, bool(request.address), request.quiet)
            _write_spec(experiment, plan)
            with silenced_stderr(request.quiet):
                plan.prepare(shared)
            _write_spec(experiment, plan)
            tuner = new_tuner(plan, trainable_of(plan), storage, request.quiet)
            sign_stored(experiment, ["tuner.pkl"])  # Tune wrote it; a resume will unpickle it
        return _fit(tuner, experiment, plan, cluster, session_start, resumed=False)
    finally:
        _stop_ray(started_ray)


def _fit(
    tuner: Any,
    experiment: Location,
    plan: SearchPlan,
    cluster: dict[str, float],
    session_start: float,
    resumed: bool,
) -> SearchOutcome:
    """Run the trials (Tune's state saves signed as they are written), record the session in
    the spec and write the report."""
    # Tune forces an experiment snapshot whenever a trial has replaced its kept checkpoints; we
    # want those snapshots (they make resume lose less) without a warning per snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    fit_start = time.perf_counter()
    with quiet_missing_results(), signing(experiment):
        tuner.fit()
    fit_s = time.perf_counter() - fit_start
    wall = time.perf_counter() - session_start
    records = load_records(experiment, [a.name for a in plan.axes])
    plan.sessions.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - wall)),
            "wall_s": round(wall, 2),
            "tune_fit_s": round(fit_s, 2),
            "resumed": resumed,
            "finished_trials": sum(r.status in FINAL_STATUSES for r in records),
            "trials": len(records),
            "cluster": cluster,
            "provenance": _provenance(plan, wall),
        }
    )
    _write_spec(experiment, plan)
    report = export_report(experiment, plan, records)
    return SearchOutcome(experiment, plan, records, report, wall, resumed)


def _provenance(plan: SearchPlan, wall: float) -> dict[str, Any]:
    """The driver session's provenance (:mod:`bmssl.provenance`): code, software, machine, the
    base config and a fingerprint of its data (each trial's trainer records its own)."""
    import sys

    from bmssl import provenance
    from bmssl.config import config_to_dict

    return provenance.collect(
        datasets=provenance.fingerprint_datasets(provenance.dataset_refs(plan.base)),
        configs=config_to_dict(plan.base),
        command={"argv": sys.argv[1:], "cwd": os.getcwd()},
        wall_time_s=wall,
    )


def _stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def export_report(
    experiment: Location, plan: SearchPlan, records: list[TrialRecord]
) -> ReportPaths:
    """Write ``records`` into ``<experiment>/report`` (best config YAML included)."""
    best = best_record(records)
    best_yaml = plan.best_config_yaml(best) if best is not None else None
    with experiment.child(REPORT_DIR).staged() as directory:
        return write_report(records, plan.to_json(), plan.axes, directory, best_yaml)


def report_existing(experiment_dir: str | Path) -> tuple[SearchPlan, ReportPaths, Location]:
    """Re-export the report of a search directory (finished or not) without running anything."""
    experiment = location_of(experiment_dir)
    if not experiment.is_file(SPEC_FILE):
        raise UserError(
            f"{experiment.display()} holds no {SPEC_FILE}; pass the directory of a search started "
            "with `python -m tuning search` (<out>/<name>)"
        )
    plan = SearchPlan.from_json(json.loads(experiment.read_text(SPEC_FILE)))
    from ray import tune

    if not tune.Tuner.can_restore(experiment.uri):
        raise UserError(
            f"{experiment.display()} holds no Tune experiment state yet; nothing to report"
        )
    records = load_records(experiment, [a.name for a in plan.axes])
    return plan, export_report(experiment, plan, records), experiment


# -- helpers --------------------------------------------------------------------------------


def _write_spec(experiment: Location, plan: SearchPlan) -> None:
    experiment.write_text(SPEC_FILE, json.dumps(plan.to_json(), indent=2) + "\n")


def _stored_plan(experiment: Location, now: SearchPlan) -> SearchPlan:
    """The stored plan of the search being resumed, refusing a request with other settings."""
    if not experiment.is_file(SPEC_FILE):
        raise UserError(
            f"{experiment.display()} holds Tune state but no {SPEC_FILE}; it was not started by "
            "`python -m tuning search`, so it cannot be resumed here"
        )
    stored = SearchPlan.from_json(json.loads(experiment.read_text(SPEC_FILE)))
    for key, mine, theirs in (
        ("method", stored.method.name, now.method.name),
        ("space", stored.space.name, now.space.name),
    ):
        if mine != theirs:
            raise UserError(
                f"search {stored.name!r} was started with {key} {mine!r}, not {theirs!r}; "
                "resume it with the same command it was started with"
            )
    # Resuming must not quietly mix settings: the trials already run used the stored ones.
    changed = stored.differences(now)
    if changed:
        raise UserError(
            f"search {stored.name!r} was started with other settings ({'; '.join(changed)}); "
            "resume it with the command it was started with, or pass --name to start another"
        )
    stored.gpus_per_trial, stored.cpus_per_trial = now.gpus_per_trial, now.cpus_per_trial
    return stored


def _shared_dir(experiment: Location, name: str) -> Path:
    """Where a driver-side stage (BiSSL's pretext) puts files every trial reads."""
    if experiment.local is not None:
        return experiment.local / "shared"
    # Remote storage: trials read the file by path, so it must be a path; on a multi-node
    # cluster pass init_from on a mount every node shares instead.
    return Path(tempfile.gettempdir()) / "tuning-shared" / name
