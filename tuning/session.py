"""The Ray side of a search: start or join Ray, check it can host a trial, build the Tuner, and
keep Ray's chatter off the terminal under ``--quiet``.

Nothing here writes to the search folder except :func:`new_tuner` (Tune writes ``tuner.pkl``
there, which :mod:`tuning.trust` then signs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from bmssl.data.images import SKIP_CORRUPT_ENV
from bmssl.errors import UserError
from bmssl.plugins import PLUGINS_ENV
from tuning.plan import SearchPlan
from tuning.spaces import param_space
from tuning.storage import Location

#: Tune's switch between its newer console output and the legacy reporter
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
#: ASHA's reduction factor: keep the top third at each rung
ASHA_REDUCTION_FACTOR = 3
#: environment variables the driver passes on to the workers of a cluster it joins
FORWARDED_ENV = (PLUGINS_ENV, SKIP_CORRUPT_ENV)


@contextlib.contextmanager
def quiet_output(quiet: bool) -> Iterator[None]:
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


@contextlib.contextmanager
def silenced_stderr(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def init_ray(address: str | None, num_cpus: int | None, quiet: bool) -> bool:
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

        # Ship this checkout's packages to every node, so that workers run the same code as
        # the driver without an install on each machine; plugin methods must be importable.
        runtime_env: dict[str, Any] = {"py_modules": [bmssl, bissl, tuning]}
        forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        if forwarded:  # plugin methods, --skip-corrupt
            runtime_env["env_vars"] = forwarded
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


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def trainable_of(plan: SearchPlan) -> Any:
    from ray import tune

    from tuning.trainables import run_trial

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan), resources)


def new_tuner(plan: SearchPlan, trainable: Any, storage: Location, quiet: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from bmssl.tracking import tune_callbacks
    from bmssl.trainer import tracking_of

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
            # tracker=mlflow: every trial an MLflow run, through Tune's own callback
            callbacks=tune_callbacks(*tracking_of(plan.base), plan.name),
        ),
    )


def check_resources(plan: SearchPlan, connected: bool, quiet: bool) -> dict[str, float]:
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
