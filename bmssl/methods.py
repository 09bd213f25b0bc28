"""The method registry: one place that lists every method the harness can train.

A :class:`Method` names its config class, its trainer class (a :class:`bmssl.trainer.Trainer`),
its presets (YAML files of config values, e.g. ``cpu`` or ``paper``) and the values it fixes
(Meta-SSL is BMSSL with ``bootstrap_steps=0``). ``python -m bmssl train``, ``eval`` and
``methods``, ``reproduce/table1.py``, ``reproduce/bissl_table.py`` and ``python -m tuning``
all read it, so a method registered once is trainable, tabulable and searchable.

Classes are named lazily (``"module:Name"``) so that listing methods imports no torch. Methods
of other packages register themselves on import (:mod:`bmssl.plugins`): BiSSL's
``bissl.methods``, the modules named in ``BMSSL_PLUGINS`` and entry points.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.errors import UserError
from bmssl.plugins import load_plugins

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class Method:
    """One trainable method.

    ``config`` and ``trainer`` are classes or ``"module:Name"`` references; ``trainer`` None
    means the method is not trained (the random-init row). ``presets`` maps a preset name to a
    YAML file of config values. ``fixed`` values are applied last and cannot be overridden.
    ``runner`` (optional, ``"module:function"``) replaces the trainer for searches whose trial is
    not one Trainer run: ``run(config, out_dir, on_eval) -> (metrics, step, checkpoint)``;
    ``prepare`` (optional) is a driver-side stage run once before the trials of a search:
    ``prepare(base_config, directory) -> overrides``.
    """

    name: str
    label: str
    config: str | type
    trainer: str | type | None
    description: str
    presets: Mapping[str, str | Path] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    cost: int = 1
    usage: str = ""
    runner: str | None = None
    prepare: str | None = None

    def config_class(self) -> type:
        return _resolve(self.config, self.name)

    def trainer_class(self) -> type | None:
        return None if self.trainer is None else _resolve(self.trainer, self.name)

    def preset_path(self, preset: str) -> Path:
        if preset not in self.presets:
            known = ", ".join(self.presets) or "none"
            raise UserError(
                f"method {self.name!r} has no preset {preset!r}; its presets: {known} "
                "(or pass the path of a YAML file)"
            )
        return Path(self.presets[preset])

    def resolve_config_source(self, source: str | Path | None) -> Path | None:
        """``--config`` may name a preset of this method or a YAML file."""
        if source is None:
            return None
        if str(source) in self.presets:
            return self.preset_path(str(source))
        return Path(source)

    def load_config(
        self,
        source: str | Path | None = None,
        overrides: Mapping[str, Any] | list[str] | tuple[str, ...] = (),
        base: Any = None,
    ) -> Any:
        """Defaults (or ``base``) < preset or YAML file ``source`` < overrides < ``fixed``."""
        from bmssl.config import load_config, parse_overrides

        extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        clash = sorted(k for k in extra if k in self.fixed and str(extra[k]) != str(self.fixed[k]))
        if clash:
            raise UserError(
                f"method {self.name!r} fixes {', '.join(f'{k}={self.fixed[k]!r}' for k in clash)}; "
                "drop the override or pick another method"
            )
        extra.update(self.fixed)
        return load_config(self.config_class(), self.resolve_config_source(source), extra, base)

    def runner_function(self) -> Callable[..., Any] | None:
        return None if self.runner is None else _resolve(self.runner, self.name)

    def prepare_function(self) -> Callable[..., Any] | None:
        return None if self.prepare is None else _resolve(self.prepare, self.name)


_METHODS: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace`` to redefine an existing name)."""
    if method.name in _METHODS and not replace and _METHODS[method.name] != method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[Method]:
    """Every registered method, built-ins first."""
    load_plugins()
    return list(_METHODS.values())


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is a :class:`UserError` listing the known."""
    load_plugins()
    if name not in _METHODS:
        raise UserError(
            f"unknown method {name!r}; choose one of: {', '.join(_METHODS)} "
            "(list them with: python -m bmssl methods)"
        )
    return _METHODS[name]


def _resolve(ref: str | type, method: str) -> Any:
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise UserError(
                f"method {method!r} needs {module_name}, which cannot be imported here"
            ) from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"method {method!r} needs {ref}, which {module_name} lacks") from None


def _preset(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


for _method in (
    Method(
        "random",
        "Random init",
        "bmssl.pretrain:RunConfig",
        None,
        "the untrained encoder (seeded): the floor every pre-training must beat",
        cost=0,
    ),
    Method(
        "simclr",
        "SimCLR",
        "bmssl.simclr:SimCLRConfig",
        "bmssl.simclr:SimCLRTrainer",
        "SimCLR pre-training (NT-Xent between two views of each image)",
        {
            "cpu": _preset("simclr-cpu"),
            "tiny": _preset("simclr-tiny"),
            "paper": _preset("simclr-paper"),
        },
        cost=2,
        usage="python -m bmssl train simclr --config FILE --out RUN_DIR",
    ),
    Method(
        "protonet",
        "ProtoNet (supervised, upper bound)",
        "bmssl.protonet:ProtoNetConfig",
        "bmssl.protonet:ProtoNetTrainer",
        "supervised prototypical network on the labelled training classes",
        {"cpu": _preset("protonet-cpu"), "paper": _preset("protonet-paper")},
        cost=1,
        usage="python -m bmssl train protonet --config FILE --out RUN_DIR",
    ),
    *(
        Method(
            name,
            label,
            "bmssl.meta:BMSSLConfig",
            "bmssl.meta:BMSSLTrainer",
            description,
            {p: _preset(f"bmssl-{p}") for p in ("cpu", "tiny", "paper")},
            fixed=fixed,
            cost=3,
            usage=f"python -m bmssl train {name} --config FILE --out RUN_DIR",
        )
        for name, label, description, fixed in (
            (
                "bmssl",
                "BMSSL (δ > 0)",
                "bootstrapped meta self-supervised learning (L inner steps, bootstrap horizon δ)",
                {},
            ),
            (
                "meta-ssl",
                "Meta-SSL, no bootstrap (δ = 0)",
                "BMSSL without the bootstrapped target (δ = 0): plain meta self-supervised learning",
                {"bootstrap_steps": 0},
            ),
            (
                "bmssl-fo",
                "BMSSL first-order",
                "BMSSL with a first-order meta-gradient (no second derivatives through the L steps)",
                {"first_order": True},
            ),
        )
    ),
):
    register_method(_method)
