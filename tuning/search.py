"""The search driver: resolve a request into a stored plan, build (or restore) the Tuner, run it,
export the results.

A search lives in ``<storage>/<name>``: Tune's experiment state and trial directories, our
``tuning_spec.json`` (the resolved plan: method, space, base config, scheduler, resources, and
one entry per driver session), and ``report/`` (see :mod:`tuning.export`). ``--resume`` restores
the Tune experiment from there with :meth:`ray.tune.Tuner.restore`: finished trials keep their
results, unfinished ones continue from their last checkpoint, pending ones start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.config import config_to_yaml
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.io import write_json
from tuning.export import (
    FINAL_STATUSES,
    ReportPaths,
    TrialRecord,
    best_record,
    load_records,
    quiet_missing_results,
)
from tuning.export import write_report as _write_report
from tuning.methods import get_target
from tuning.spaces import SCHEDULERS, SEARCH_ALGORITHMS, Axis, get_space, param_space

SPEC_FILE = "tuning_spec.json"
REPORT_DIR = "report"
DEFAULT_STORAGE = "results/tuning"
#: ASHA's reduction factor: keep the top third at each rung
ASHA_REDUCTION_FACTOR = 3


@dataclass
class SearchRequest:
    """What the user asked for (the command line, or a test)."""

    method: str
    space: str
    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    num_samples: int | None = None
    search: str | None = None
    scheduler: str | None = None
    seeds: list[int] | None = None
    search_seed: int = 0
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    grace_period: int | None = None
    storage: str = DEFAULT_STORAGE
    name: str | None = None
    resume: bool = False
    address: str | None = None
    num_cpus: int | None = None
    verbose: int = 1


@dataclass
class SearchOutcome:
    """What a driver session ended with."""

    experiment_dir: Path
    plan: dict[str, Any]
    records: list[TrialRecord]
    report: ReportPaths
    wall_s: float
    resumed: bool

    @property
    def unfinished(self) -> list[TrialRecord]:
        return [r for r in self.records if r.status not in FINAL_STATUSES]

    @property
    def interrupted(self) -> bool:
        return bool(self.unfinished)

    @property
    def best(self) -> TrialRecord | None:
        return best_record(self.records)


def storage_dir(storage: str) -> Path:
    """The absolute local (or shared-mount) directory Tune writes to."""
    if "://" in storage:
        raise UserError(
            f"--storage {storage!r} is a URI; pass a directory path (a local disk for one machine, "
            "a mount every node shares, such as NFS, for a cluster)"
        )
    return Path(storage).expanduser().resolve()


def validate_request(request: SearchRequest) -> None:
    """Raise :class:`UserError` for any bad value in ``request`` (before Ray starts)."""
    space = get_space(request.space)
    space.target_for(request.method)
    if request.search is not None:
        check_choice("search algorithm", request.search, SEARCH_ALGORITHMS)
    if request.scheduler is not None:
        check_choice("scheduler", request.scheduler, SCHEDULERS)
    if request.num_samples is not None:
        check_positive("--num-samples", request.num_samples)
    check_positive("--cpus-per-trial", request.cpus_per_trial)
    if request.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {request.gpus_per_trial}")
    if request.gpus_per_trial > 1 and request.gpus_per_trial != int(request.gpus_per_trial):
        raise UserError(
            f"--gpus-per-trial {request.gpus_per_trial} is not allowed: use a fraction up to 1 "
            "(trials share a GPU) or a whole number of GPUs"
        )
    for name in ("max_concurrent", "grace_period", "num_cpus"):
        value = getattr(request, name)
        if value is not None:
            check_positive("--" + name.replace("_", "-"), value)
    if request.seeds is not None and not request.seeds:
        raise UserError("--seeds is empty; give a comma-separated list such as 0,1,2")
    if not request.name and request.name is not None:
        raise UserError("--name is empty; give the search a name, or leave --name out")
    if request.name and ("/" in request.name or request.name.startswith(".")):
        raise UserError(f"--name {request.name!r} must be a plain directory name")
    storage_dir(request.storage)


def make_plan(request: SearchRequest) -> dict[str, Any]:
    """Resolve ``request``: base config, axes, search/scheduler defaults, ASHA settings."""
    validate_request(request)
    space = get_space(request.space)
    target = get_target(space.target_for(request.method))
    base = target.base_config(request.config_path, request.overrides, request.preset)
    axes = space.axes(base)
    search = request.search or space.default_search
    scheduler = request.scheduler or space.default_scheduler
    num_samples = request.num_samples or space.default_num_samples(search)
    steps_axis = next((a for a in axes if a.name == target.steps_attr), None)
    max_t = int(max(steps_axis.grid)) if steps_axis else target.budget(base)
    grace = int(request.grace_period or min(target.eval_interval(base), max_t))
    return {
        "name": request.name or f"{request.method}-{request.space}",
        "method": request.method,
        "space": request.space,
        "space_description": space.description,
        "target": target.name,
        "base": dataclasses.asdict(base),
        # the base as requested, before a driver stage filled anything in (resume compares it)
        "requested_base": dataclasses.asdict(base),
        "axes": [a.name for a in axes],
        "search": search,
        "scheduler": scheduler,
        "num_samples": int(num_samples),
        "seeds": list(request.seeds) if request.seeds else None,
        "search_seed": int(request.search_seed),
        "max_t": max_t,
        "grace_period": grace,
        "gpus_per_trial": float(request.gpus_per_trial),
        "cpus_per_trial": float(request.cpus_per_trial),
        "max_concurrent": request.max_concurrent,
        "sessions": [],
    }


def plan_axes(plan: Mapping[str, Any]) -> list[Axis]:
    """The plan's axes, rebuilt from its stored base config."""
    target = get_target(plan["target"])
    base = target.trial_config(plan["base"], {})
    return get_space(plan["space"]).axes(base)


def run_search(request: SearchRequest) -> SearchOutcome:
    """Run (or resume) a search to the end or to an interrupt; always writes the report."""
    validate_request(request)
    session_start = time.perf_counter()
    storage = storage_dir(request.storage)
    name = request.name or f"{request.method}-{request.space}"
    experiment_dir = storage / name
    spec_path = experiment_dir / SPEC_FILE
    from ray import tune

    restorable = tune.Tuner.can_restore(str(experiment_dir))
    if restorable and not request.resume:
        raise UserError(
            f"search {name!r} already exists in {experiment_dir}; add --resume to continue it, "
            "or pass --name to start another"
        )
    resumed = bool(request.resume and restorable)
    if resumed:
        plan = _stored_plan(spec_path, request)
        plan["gpus_per_trial"] = float(request.gpus_per_trial)
        plan["cpus_per_trial"] = float(request.cpus_per_trial)
    else:
        if request.resume:
            print(
                f"tuning: nothing to resume in {experiment_dir} (no saved experiment state); "
                "starting the search",
                file=sys.stderr,
            )
        plan = make_plan(request)
        write_json(spec_path, plan)
        plan["base"] = _prepared_base(plan, experiment_dir)
    axes = plan_axes(plan)
    write_json(spec_path, plan)
    # Tune forces an experiment snapshot whenever a trial has replaced its kept checkpoints; we
    # want those snapshots (they make resume lose less) without a warning per snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _init_ray(request.address, request.num_cpus)
    try:
        _check_resources(plan, connected=bool(request.address))
        trainable = _trainable(plan)
        if resumed:
            with quiet_missing_results():
                tuner = tune.Tuner.restore(
                    str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True
                )
        else:
            tuner = _new_tuner(plan, axes, trainable, storage, request.verbose)
        fit_start = time.perf_counter()
        with quiet_missing_results():
            tuner.fit()
        fit_s = time.perf_counter() - fit_start
        wall = time.perf_counter() - session_start
        records = load_records(experiment_dir, plan["axes"])
        plan["sessions"].append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - wall)),
                "wall_s": round(wall, 2),
                "tune_fit_s": round(fit_s, 2),
                "resumed": resumed,
                "finished_trials": sum(r.status in FINAL_STATUSES for r in records),
                "trials": len(records),
            }
        )
        write_json(spec_path, plan)
        report = write_report(experiment_dir, plan, axes, records)
        return SearchOutcome(experiment_dir, plan, records, report, wall, resumed)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def write_report(
    experiment_dir: Path,
    plan: Mapping[str, Any],
    axes: Sequence[Axis],
    records: Sequence[TrialRecord],
) -> ReportPaths:
    """Export ``records`` into ``<experiment_dir>/report`` (best config YAML included)."""
    best = best_record(records)
    best_yaml = None
    if best is not None:
        target = get_target(plan["target"])
        params = {k: v for k, v in best.params.items()}
        if best.seed is not None:
            params["seed"] = best.seed
        best_yaml = f"# Train with it: {target.usage}\n" if target.usage else ""
        best_yaml += config_to_yaml(target.trial_config(plan["base"], params))
    return _write_report(records, plan, axes, experiment_dir / REPORT_DIR, best_yaml)


def report_existing(experiment_dir: str | Path) -> tuple[dict[str, Any], ReportPaths]:
    """Re-export the report of a search directory (finished or not) without running anything."""
    experiment_dir = Path(experiment_dir).expanduser().resolve()
    spec_path = experiment_dir / SPEC_FILE
    if not spec_path.is_file():
        raise UserError(
            f"{experiment_dir} holds no {SPEC_FILE}; pass the directory of a search started with "
            "`python -m tuning search` (<storage>/<name>)"
        )
    plan = json.loads(spec_path.read_text())
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise UserError(f"{experiment_dir} holds no Tune experiment state yet; nothing to report")
    records = load_records(experiment_dir, plan["axes"])
    return plan, write_report(experiment_dir, plan, plan_axes(plan), records)


# -- helpers --------------------------------------------------------------------------------


def _stored_plan(spec_path: Path, request: SearchRequest) -> dict[str, Any]:
    if not spec_path.is_file():
        raise UserError(
            f"{spec_path.parent} holds Tune state but no {SPEC_FILE}; it was not started by "
            "`python -m tuning search`, so it cannot be resumed here"
        )
    plan = json.loads(spec_path.read_text())
    for key in ("method", "space"):
        if plan[key] != getattr(request, key):
            raise UserError(
                f"search {plan['name']!r} was started with {key} {plan[key]!r}, not "
                f"{getattr(request, key)!r}; resume it with the same command it was started with"
            )
    # Resuming must not quietly mix settings: the trials already run used the stored ones.
    now = make_plan(request)
    changed = [
        f"{field}: {plan[key].get(field)!r} -> {now[key].get(field)!r}"
        for key in ("requested_base",)
        for field in sorted(set(plan[key]) | set(now[key]))
        if plan[key].get(field) != now[key].get(field)
    ]
    changed += [
        f"{key}: {plan[key]!r} -> {now[key]!r}"
        for key in ("axes", "search", "scheduler", "num_samples", "seeds", "search_seed", "max_t")
        if plan[key] != now[key]
    ]
    if changed:
        raise UserError(
            f"search {plan['name']!r} was started with other settings ({'; '.join(changed)}); "
            "resume it with the command it was started with, or pass --name to start another"
        )
    return plan


def _prepared_base(plan: Mapping[str, Any], experiment_dir: Path) -> dict[str, Any]:
    """The plan's base config after the target's one-off driver stage (BiSSL: the pretext)."""
    target = get_target(plan["target"])
    base = target.trial_config(plan["base"], {})
    return dataclasses.asdict(target.prepare(base, experiment_dir / "shared"))


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        import bissl
        import bmssl
        import tuning

        # Ship this checkout's packages to every node, so that workers run the same code as
        # the driver without an install on each machine.
        runtime_env = {"py_modules": [bmssl, bissl, tuning]}
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except ConnectionError as err:
            raise UserError(
                f"cannot connect to a Ray cluster at --address {address!r} ({err}); start one "
                "with `ray start --head` on the head node (and `ray start --address HEAD:6379` "
                "on the others), or leave --address out to run on this machine"
            ) from None
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


def _trainable(plan: Mapping[str, Any]) -> Any:
    from ray import tune

    from tuning.trainables import run_trial

    spec = {
        "target": plan["target"],
        "base": plan["base"],
        "cpus_per_trial": plan["cpus_per_trial"],
    }
    resources = {"cpu": plan["cpus_per_trial"], "gpu": plan["gpus_per_trial"]}
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def _new_tuner(
    plan: Mapping[str, Any], axes: Sequence[Axis], trainable: Any, storage: Path, verbose: int
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if plan["scheduler"] == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="step",
            max_t=plan["max_t"],
            grace_period=plan["grace_period"],
            reduction_factor=ASHA_REDUCTION_FACTOR,
        )
    else:
        scheduler = FIFOScheduler()
    # Seeded, so the sampled configurations and per-trial seeds repeat across runs.
    search_alg = BasicVariantGenerator(
        random_state=plan["search_seed"], max_concurrent=plan["max_concurrent"] or 0
    )
    return tune.Tuner(
        trainable,
        param_space=param_space(axes, plan["search"], plan["seeds"]),
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            num_samples=plan["num_samples"],
            search_alg=search_alg,
            scheduler=scheduler,
            trial_dirname_creator=trial_dirname,
            # One worker process runs trial after trial: torch and the datasets load once.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan["name"],
            storage_path=str(storage),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=verbose,
        ),
    )


def _check_resources(plan: Mapping[str, Any], connected: bool) -> None:
    """Fail early when no node can ever host a trial (Tune would wait forever)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    print(
        f"tuning: Ray has {cpus:g} CPUs and {gpus:g} GPUs; each trial takes "
        f"{plan['cpus_per_trial']:g} CPUs and {plan['gpus_per_trial']:g} GPUs",
        file=sys.stderr,
    )
    short = [
        f"{need:g} {kind} per trial but the {where} has {have:g}"
        for kind, need, have in (
            ("CPUs", plan["cpus_per_trial"], cpus),
            ("GPUs", plan["gpus_per_trial"], gpus),
        )
        for where in ["cluster" if connected else "machine"]
        if need > have
    ]
    if plan["gpus_per_trial"] > 0 and "device" not in get_target(plan["target"]).fields():
        print(
            f"tuning: warning: {plan['target']} has no device option in this checkout and trains "
            "on the CPU; the GPUs reserved per trial stay idle",
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
