"""The search driver: resolve a request into a :class:`tuning.plan.SearchPlan`, store it, build
(or restore) the Tuner, run it, export the results.

A search lives in ``<out>/<name>`` (a directory, or a URI Ray accepts): Tune's experiment state
and trial directories (each with Tune's ``result.json``, ``progress.csv`` and TensorBoard events),
our ``tuning_spec.json`` (the plan, and one entry per driver session) and ``report/`` (see
:mod:`tuning.report`). ``--resume`` restores the Tune experiment from there with
:meth:`ray.tune.Tuner.restore`: finished trials keep their results, unfinished ones continue from
their last checkpoint, pending ones start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.errors import UserError
from tuning.plan import SearchPlan, SearchRequest, make_plan
from tuning.records import (
    FINAL_STATUSES,
    TrialRecord,
    best_record,
    load_records,
    quiet_missing_results,
)
from tuning.report import ReportPaths, write_report
from tuning.spaces import param_space
from tuning.storage import Location, location_of, resolve_storage

SPEC_FILE = "tuning_spec.json"
REPORT_DIR = "report"
#: Tune's switch between its newer console output and the legacy reporter
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
#: ASHA's reduction factor: keep the top third at each rung
ASHA_REDUCTION_FACTOR = 3


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
    storage = resolve_storage(request.out)
    experiment = storage.child(plan.name)
    with _quiet_output(request.quiet):
        return _run(request, plan, storage, experiment, session_start)


def _run(
    request: SearchRequest,
    plan: SearchPlan,
    storage: Location,
    experiment: Location,
    session_start: float,
) -> SearchOutcome:
    from ray import tune

    restorable = tune.Tuner.can_restore(experiment.uri)
    if restorable and not request.resume:
        raise UserError(
            f"search {plan.name!r} already exists in {experiment.display()}; add --resume to "
            "continue it, or pass --name to start another"
        )
    resumed = bool(request.resume and restorable)
    if resumed:
        plan = _stored_plan(experiment, plan)
    else:
        if request.resume:
            print(
                f"tuning: nothing to resume in {experiment.display()} (no saved experiment "
                "state); starting the search",
                file=sys.stderr,
            )
        _write_spec(experiment, plan)
        with _silenced_stderr(request.quiet):
            plan.prepare(_shared_dir(experiment, plan.name))
    _write_spec(experiment, plan)
    # Tune forces an experiment snapshot whenever a trial has replaced its kept checkpoints; we
    # want those snapshots (they make resume lose less) without a warning per snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _init_ray(request.address, request.num_cpus, request.quiet)
    try:
        cluster = _check_resources(plan, bool(request.address), request.quiet)
        trainable = _trainable(plan)
        if resumed:
            with quiet_missing_results():
                tuner = tune.Tuner.restore(
                    experiment.uri, trainable, resume_unfinished=True, resume_errored=True
                )
        else:
            tuner = _new_tuner(plan, trainable, storage, request.quiet)
        fit_start = time.perf_counter()
        with quiet_missing_results():
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
            }
        )
        _write_spec(experiment, plan)
        report = export_report(experiment, plan, records)
        return SearchOutcome(experiment, plan, records, report, wall, resumed)
    finally:
        if started_ray:
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


@contextlib.contextmanager
def _silenced_stderr(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def _shared_dir(experiment: Location, name: str) -> Path:
    """Where a driver-side stage (BiSSL's pretext) puts files every trial reads."""
    if experiment.local is not None:
        return experiment.local / "shared"
    # Remote storage: trials read the file by path, so it must be a path; on a multi-node
    # cluster pass init_from on a mount every node shares instead.
    return Path(tempfile.gettempdir()) / "tuning-shared" / name


@contextlib.contextmanager
def _quiet_output(quiet: bool) -> Iterator[None]:
    """Under ``--quiet``: Ray's driver-side loggers at ERROR, Tune's legacy reporter (which
    prints nothing at ``verbose=0``, unlike the newer one's experiment banner) and no chatter of
    a driver-side stage on stderr. Restored afterwards."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train")]
    levels = [logger.level for logger in loggers]
    old = os.environ.get(NEW_OUTPUT_ENV)
    os.environ[NEW_OUTPUT_ENV] = "0"
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if old is None:
            os.environ.pop(NEW_OUTPUT_ENV, None)
        else:
            os.environ[NEW_OUTPUT_ENV] = old


def _init_ray(address: str | None, num_cpus: int | None, quiet: bool) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it.

    ``quiet``: the workers' output is not forwarded to this terminal (``log_to_driver``; it
    stays in Ray's session logs) and Ray logs only errors.
    """
    import ray

    if ray.is_initialized():
        return False
    logs: dict[str, Any] = {"log_to_driver": not quiet}
    if quiet:
        logs["logging_level"] = logging.ERROR
    if address:
        import bissl
        import bmssl
        import tuning
        from bmssl.plugins import PLUGINS_ENV

        # Ship this checkout's packages to every node, so that workers run the same code as
        # the driver without an install on each machine; plugin methods must be importable.
        runtime_env: dict[str, Any] = {"py_modules": [bmssl, bissl, tuning]}
        if os.environ.get(PLUGINS_ENV):
            runtime_env["env_vars"] = {PLUGINS_ENV: os.environ[PLUGINS_ENV]}
        try:
            ray.init(address=address, runtime_env=runtime_env, **logs)
        except ConnectionError as err:
            raise UserError(
                f"cannot connect to a Ray cluster at --address {address!r} ({err}); start one "
                "with `ray start --head` on the head node (and `ray start --address HEAD:6379` "
                "on the others), or leave --address out to run on this machine"
            ) from None
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=False, **logs)
    return True


def _trainable(plan: SearchPlan) -> Any:
    from ray import tune

    from tuning.trainables import run_trial

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan), resources)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def _new_tuner(plan: SearchPlan, trainable: Any, storage: Location, quiet: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if plan.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="step",
            metric="val_acc",
            mode="max",
            max_t=plan.max_t,
            grace_period=plan.grace_period,
            reduction_factor=ASHA_REDUCTION_FACTOR,
        )
    else:
        scheduler = FIFOScheduler()
    # Seeded, so the sampled configurations and per-trial seeds repeat across runs.
    search_alg = BasicVariantGenerator(
        random_state=plan.search_seed, max_concurrent=plan.max_concurrent or 0
    )
    # No metric on the TuneConfig: the best trial is chosen by tuning.records (on the final
    # val_acc), and a trial with a final stage reports val_acc only at its end.
    return tune.Tuner(
        trainable,
        param_space=param_space(plan.axes, plan.search, plan.seeds),
        tune_config=tune.TuneConfig(
            num_samples=plan.num_samples,
            search_alg=search_alg,
            scheduler=scheduler,
            trial_dirname_creator=trial_dirname,
            # One worker process runs trial after trial: torch and the datasets load once.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=storage.uri,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0 if quiet else 1,
        ),
    )


def _check_resources(plan: SearchPlan, connected: bool, quiet: bool) -> dict[str, float]:
    """Fail early when no node can ever host a trial (Tune would wait forever); returns the
    cluster's size (recorded in the session entry of the spec)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if not quiet:
        print(
            f"tuning: Ray has {nodes} node(s), {cpus:g} CPUs and {gpus:g} GPUs; each trial takes "
            f"{plan.cpus_per_trial:g} CPUs and {plan.gpus_per_trial:g} GPUs",
            file=sys.stderr,
        )
    short = [
        f"{need:g} {kind} per trial but the {where} has {have:g}"
        for kind, need, have in (
            ("CPUs", plan.cpus_per_trial, cpus),
            ("GPUs", plan.gpus_per_trial, gpus),
        )
        for where in ["cluster" if connected else "machine"]
        if need > have
    ]
    if plan.gpus_per_trial > 0 and not hasattr(plan.base, "device"):
        print(
            f"tuning: warning: {plan.method.name} has no device option and trains on the CPU; "
            "the GPUs reserved per trial stay idle",
            file=sys.stderr,
        )
    if short and not connected:
        raise UserError(
            f"{'; '.join(short)}; lower --cpus-per-trial/--gpus-per-trial (or raise --num-cpus)"
        )
    if short:
        print(
            f"tuning: warning: {'; '.join(short)}; trials wait until the cluster grows",
            file=sys.stderr,
        )
    return {"nodes": nodes, "cpus": cpus, "gpus": gpus}
