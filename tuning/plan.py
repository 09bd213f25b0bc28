"""A search request resolved once into a typed :class:`SearchPlan`.

The plan holds the resolved objects (the registered :class:`bmssl.methods.Method`, the
:class:`tuning.spaces.Space`, the base config object, the axes, the scheduler settings), and
serialises itself to ``tuning_spec.json`` (:meth:`SearchPlan.to_json`); a resumed search or a
rebuilt report reads it back with :meth:`SearchPlan.from_json` instead of resolving names again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.config import config_from_dict, config_to_dict, config_to_yaml
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.methods import Method, get_method
from tuning.records import TrialRecord
from tuning.spaces import SCHEDULERS, SEARCH_ALGORITHMS, Axis, Space, get_space
from tuning.storage import check_storage

DEFAULT_STORAGE = "results/tuning"
#: settings a resumed search must share with the one it continues
RESUME_KEYS = ("axes", "search", "scheduler", "num_samples", "seeds", "search_seed", "max_t")


@dataclass
class SearchRequest:
    """What the user asked for (the command line, or a test)."""

    method: str
    space: str
    #: a preset of the method (``tiny``, ``cpu``, ...) or a YAML file of config values
    config: str | None = None
    #: ``key=value`` base-config overrides (dotted inside sections: ``bilevel.alternations``)
    overrides: Mapping[str, Any] | list[str] = field(default_factory=dict)
    num_samples: int | None = None
    search: str | None = None
    scheduler: str | None = None
    seeds: list[int] | None = None
    search_seed: int = 0
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    grace_period: int | None = None
    #: a directory or a URI Ray accepts (``file://``, ``s3://``, ...)
    out: str = DEFAULT_STORAGE
    name: str | None = None
    resume: bool = False
    address: str | None = None
    num_cpus: int | None = None
    quiet: bool = False


def check_request_options(request: SearchRequest) -> None:
    """Raise :class:`UserError` for a bad option value (no registry, file or Ray touched)."""
    if request.search is not None:
        check_choice("search algorithm", request.search, SEARCH_ALGORITHMS)
    if request.scheduler is not None:
        check_choice("scheduler", request.scheduler, SCHEDULERS)
    if request.num_samples is not None:
        check_positive("--num-samples", request.num_samples)
    check_positive("--cpus-per-trial", request.cpus_per_trial)
    gpus = request.gpus_per_trial
    if not gpus >= 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {gpus}")
    if gpus > 1:
        raise UserError(
            f"--gpus-per-trial {gpus:g} is not supported: a trial trains on one GPU; pass a "
            "fraction (e.g. 0.5: two trials share a GPU) or 1"
        )
    for name in ("max_concurrent", "grace_period", "num_cpus"):
        value = getattr(request, name)
        if value is not None:
            check_positive("--" + name.replace("_", "-"), value)
    if request.seeds is not None and not request.seeds:
        raise UserError("--seeds is empty; give a comma-separated list such as 0,1,2")
    if request.name is not None and not request.name:
        raise UserError("--name is empty; give the search a name, or leave --name out")
    if request.name and ("/" in request.name or request.name.startswith(".")):
        raise UserError(f"--name {request.name!r} must be a plain directory name")
    check_storage(request.out)


@dataclass
class SearchPlan:
    """A resolved search; see the module docstring."""

    name: str
    method: Method
    space: Space
    #: the config every trial starts from (after the method's driver-side stage, if any)
    base: Any
    #: the base config as requested, before that stage (a resume compares it)
    requested: dict[str, Any]
    axes: list[Axis]
    search: str
    scheduler: str
    num_samples: int
    seeds: list[int] | None
    search_seed: int
    max_t: int
    grace_period: int
    gpus_per_trial: float
    cpus_per_trial: float
    max_concurrent: int | None
    sessions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric_description(self) -> str:
        if self.space.finish is not None:
            steps = getattr(getattr(self.base, "finetune", None), "steps", "?")
            return (
                f"validation accuracy (%) of the trained backbone fine-tuned at the end of each "
                f"trial ({steps} fine-tuning steps); the trainer's own validations are "
                f"`{self.space.finish_prefix}val_*`"
            )
        if self.method.kind == "runner":
            return f"validation accuracy (%) at the end of each trial ({self.method.description})"
        return "validation accuracy (%) at each validation of the trainer"

    def trial_config(self, params: Mapping[str, Any]) -> Any:
        """The config of one trial: the base config with the sampled params on top."""
        return self.method.load_config(None, params, base=self.base)

    def prepare(self, directory: Path) -> None:
        """Run the method's driver-side stage (BiSSL: the shared pretext) and fold its
        overrides into :attr:`base`."""
        prepare = self.method.prepare_function()
        if prepare is None:
            return
        overrides = prepare(self.base, directory)
        if overrides:
            self.base = self.method.load_config(None, overrides, base=self.base)

    def best_config_yaml(self, best: TrialRecord) -> str:
        """The best trial's full config as YAML, headed by how to train with it."""
        params = dict(best.params)
        if best.seed is not None:
            params["seed"] = best.seed
        usage = f"# Train with it: {self.method.usage}\n" if self.method.usage else ""
        return usage + config_to_yaml(self.trial_config(params))

    def differences(self, other: SearchPlan) -> list[str]:
        """What ``other`` (a new request) changes against this (stored) plan."""
        mine, theirs = _flat(self.requested), _flat(other.requested)
        changed = [
            f"{key}: {mine.get(key)!r} -> {theirs.get(key)!r}"
            for key in sorted(set(mine) | set(theirs))
            if mine.get(key) != theirs.get(key)
        ]
        a, b = self.to_json(), other.to_json()
        changed += [f"{key}: {a[key]!r} -> {b[key]!r}" for key in RESUME_KEYS if a[key] != b[key]]
        return changed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method.name,
            "space": self.space.name,
            "space_description": self.space.description,
            "metric": "val_acc",
            "metric_description": self.metric_description,
            "metric_label": (
                "fine-tuned validation accuracy (%)"
                if self.space.finish is not None
                else "validation accuracy (%)"
            ),
            "base": config_to_dict(self.base),
            "requested_base": self.requested,
            "axes": [a.name for a in self.axes],
            "axis_specs": [a.to_json() for a in self.axes],
            "search": self.search,
            "scheduler": self.scheduler,
            "num_samples": self.num_samples,
            "seeds": self.seeds,
            "search_seed": self.search_seed,
            "max_t": self.max_t,
            "grace_period": self.grace_period,
            "gpus_per_trial": self.gpus_per_trial,
            "cpus_per_trial": self.cpus_per_trial,
            "max_concurrent": self.max_concurrent,
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchPlan:
        method = get_method(data["method"])
        return cls(
            name=data["name"],
            method=method,
            space=get_space(data["space"]),
            base=config_from_dict(method.config_class(), data["base"]),
            requested=dict(data["requested_base"]),
            axes=[Axis.from_json(a) for a in data["axis_specs"]],
            search=data["search"],
            scheduler=data["scheduler"],
            num_samples=int(data["num_samples"]),
            seeds=data["seeds"],
            search_seed=int(data["search_seed"]),
            max_t=int(data["max_t"]),
            grace_period=int(data["grace_period"]),
            gpus_per_trial=float(data["gpus_per_trial"]),
            cpus_per_trial=float(data["cpus_per_trial"]),
            max_concurrent=data["max_concurrent"],
            sessions=list(data.get("sessions", [])),
        )


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def make_plan(request: SearchRequest) -> SearchPlan:
    """Resolve ``request``: method, space, base config, axes, search/scheduler defaults, ASHA.

    Every bad value is a :class:`UserError` here, before anything is written or Ray starts.
    """
    check_request_options(request)
    space = get_space(request.space)
    method = get_method(request.method)
    space.check_method(method)
    base = method.load_config(request.config, request.overrides)
    axes = space.axes(base)
    search = request.search or space.default_search
    # ASHA compares trials at each rung on the reported metric, so it needs that metric at every
    # validation: not so for a trial whose metric comes from a final stage or a one-shot runner.
    each_rung = space.finish is None and method.kind == "trainer"
    scheduler = request.scheduler or ("asha" if space.kind == "search" and each_rung else "fifo")
    if scheduler == "asha" and not each_rung:
        raise UserError(
            f"--scheduler asha cannot be used with space {space.name!r} and method "
            f"{method.name!r}: a trial's metric (val_acc) is known only at its end, so early "
            "stopping would act on another number; use --scheduler fifo"
        )
    steps_axis = next((a for a in axes if a.name == "steps"), None)
    max_t = int(max(steps_axis.grid)) if steps_axis else int(base.steps)
    every = int(getattr(base, "eval_every", 0) or 0) or max_t
    default_seeds = space.default_seeds
    seeds = request.seeds or (list(default_seeds) if default_seeds else None)
    return SearchPlan(
        name=request.name or f"{method.name}-{space.name}",
        method=method,
        space=space,
        base=base,
        requested=config_to_dict(base),
        axes=axes,
        search=search,
        scheduler=scheduler,
        num_samples=int(request.num_samples or space.default_num_samples(search)),
        seeds=list(seeds) if seeds else None,
        search_seed=int(request.search_seed),
        max_t=max_t,
        grace_period=int(request.grace_period or min(every, max_t)),
        gpus_per_trial=float(request.gpus_per_trial),
        cpus_per_trial=float(request.cpus_per_trial),
        max_concurrent=request.max_concurrent,
    )
