"""The method registry: one place that lists every method the harness can train.

A :class:`Method` names its config class, how it trains (:data:`Training`: a
:class:`bmssl.trainer.Trainer` subclass, a runner function, or nothing), its presets (YAML files
of config values, e.g. ``cpu`` or ``paper``) and the values it fixes (Meta-SSL is BMSSL with
``bootstrap_steps=0``). ``python -m bmssl train``, ``eval`` and ``methods``,
``reproduce/table1.py``, ``reproduce/bissl_table.py`` and ``python -m tuning`` all read it, so a
method registered once is trainable, tabulable and searchable.

Classes are named lazily (``"module:Name"``) so that listing methods imports no torch. The
methods of this package are :data:`BUILTIN_METHODS`; others register themselves when their
module is imported as a plugin (:mod:`bmssl.plugins`: entry points such as BiSSL's, and the
modules named in ``BMSSL_PLUGINS``). :func:`load_trained` finds the method that wrote a
checkpoint and rebuilds its backbone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bmssl.errors import UserError
from bmssl.plugins import add_entry, load_plugins

if TYPE_CHECKING:
    from torch import nn

    from bmssl.trainer import Trainer

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class ByTrainer:
    """Trained by a :class:`bmssl.trainer.Trainer` subclass (or ``"module:Name"``): one run is
    ``trainer.from_config(config, out_dir, progress).fit()``, its network ``backbone()``."""

    trainer: str | type


@dataclass(frozen=True)
class ByRunner:
    """Trained by one call ``run(config, out_dir, on_eval) -> (metrics, step, checkpoint)``
    (``"module:function"``): a search trial that is not one trainer run (BiSSL's fine-tuning
    stage alone). It yields metrics, not a backbone, so it is no Table 1 row."""

    runner: str | Callable[..., Any]


@dataclass(frozen=True)
class Untrained:
    """Not trained: ``encoder(config)`` is the network as it stands (default: the seeded random
    init of :func:`bmssl.pretrain.random_init_encoder`), the floor of a table."""

    encoder: str | Callable[..., Any] = "bmssl.pretrain:random_init_encoder"


#: how a method trains: one of the three, stated by every :class:`Method`
Training = ByTrainer | ByRunner | Untrained
TrainingKind = Literal["trainer", "runner", "untrained"]


@dataclass(frozen=True)
class Method:
    """One method.

    ``config`` is a class or a ``"module:Name"`` reference; ``training`` says how the method
    trains (:class:`ByTrainer`, :class:`ByRunner` or :class:`Untrained`; a bare Trainer class or
    reference means :class:`ByTrainer`). ``presets`` maps a preset name to a YAML file of config
    values. ``fixed`` values are applied last and cannot be overridden. ``prepare`` (optional,
    ``"module:function"``) is a driver-side stage run once before the trials of a search:
    ``prepare(base_config, directory) -> overrides``.
    """

    name: str
    label: str
    config: str | type
    training: Training | str | type
    description: str
    presets: Mapping[str, str | Path] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    cost: int = 1
    usage: str = ""
    prepare: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.training, (str, type)):
            object.__setattr__(self, "training", ByTrainer(self.training))
        elif not isinstance(self.training, (ByTrainer, ByRunner, Untrained)):
            raise TypeError(
                f"method {self.name!r}: training must be ByTrainer(...), ByRunner(...) or "
                f"Untrained(), got {self.training!r}"
            )

    @property
    def owner(self) -> str:
        return f"method {self.name!r}"

    @property
    def kind(self) -> TrainingKind:
        """How the method trains: ``"trainer"``, ``"runner"`` or ``"untrained"``."""
        if isinstance(self.training, ByTrainer):
            return "trainer"
        return "runner" if isinstance(self.training, ByRunner) else "untrained"

    @property
    def trainer(self) -> str | type | None:
        """The trainer reference of a :class:`ByTrainer` method, else None."""
        return self.training.trainer if isinstance(self.training, ByTrainer) else None

    @property
    def runner(self) -> str | Callable[..., Any] | None:
        """The runner reference of a :class:`ByRunner` method, else None."""
        return self.training.runner if isinstance(self.training, ByRunner) else None

    def config_class(self) -> type:
        return resolve(self.config, self.owner)

    def trainer_class(self) -> type[Trainer] | None:
        """The Trainer subclass of a :class:`ByTrainer` method (None for the others)."""
        return None if self.trainer is None else resolve(self.trainer, self.owner)

    def build_trainer(
        self, config: Any, out_dir: str | Path | None = None, progress: bool = True
    ) -> Trainer:
        """The trainer of one run on ``config`` (:meth:`bmssl.trainer.Trainer.from_config`)."""
        trainer_cls = self.trainer_class()
        if trainer_cls is None:
            raise UserError(f"method {self.name!r} is not trained by a trainer ({self.kind})")
        return trainer_cls.from_config(config, out_dir, progress)

    def runner_function(self) -> Callable[..., Any] | None:
        return None if self.runner is None else resolve(self.runner, self.owner)

    def untrained_backbone(self, config: Any) -> nn.Module:
        """The network of an :class:`Untrained` method for ``config``."""
        if not isinstance(self.training, Untrained):
            raise UserError(f"method {self.name!r} is trained ({self.kind}), not untrained")
        return resolve(self.training.encoder, self.owner)(config).backbone  # type: ignore[no-any-return]

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

    def prepare_function(self) -> Callable[..., Any] | None:
        return None if self.prepare is None else resolve(self.prepare, self.owner)


_METHODS: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace`` to redefine an existing name)."""
    return add_entry(_METHODS, method.name, method, "method", replace)


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


def resolve(ref: str | Any, owner: str) -> Any:
    """The object a lazy ``"module:Name"`` reference names (anything else is returned as is);
    a missing module or name is a :class:`UserError` saying that ``owner`` needs it."""
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise UserError(f"{owner} needs {module_name}, which cannot be imported here") from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{owner} needs {ref}, which {module_name} lacks") from None


@dataclass
class TrainedModel:
    """What :func:`load_trained` returns: the method, its config, the backbone and the step."""

    method: str
    config: Any
    backbone: nn.Module
    step: int


def load_trained(path: str | Path) -> TrainedModel:
    """The backbone of any registered method's checkpoint (``last.pt`` or ``best.pt``).

    The checkpoint names its trainer (``Trainer.method``); the registry gives the config class;
    the trainer class rebuilds its backbone from the saved state (``backbone_from_state``).
    """
    from bmssl.checkpoints import load_checkpoint
    from bmssl.config import config_from_dict

    state = load_checkpoint(path, restore_rng=False, expect_keys=("method", "step"))
    name = state.get("method")
    for method in list_methods():
        trainer_cls = method.trainer_class()
        if trainer_cls is not None and trainer_cls.method == name:
            break
    else:
        raise UserError(
            f"{str(path)!r} was written by {name!r}, which no registered method trains; "
            "register its method (see README, Extending the harness)"
        )
    saved = state["trainer"].get("config")
    if not isinstance(saved, dict):
        raise UserError(f"{str(path)!r} holds no config; it was not written by this harness")
    known = {k: v for k, v in saved.items() if not str(k).startswith("_")}
    config: Any = config_from_dict(method.config_class(), known)
    assert trainer_cls is not None  # the loop broke on it
    backbone = trainer_cls.backbone_from_state(config, state["trainer"])
    return TrainedModel(str(name), config, backbone, int(state["step"]))


def _preset(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


#: this package's methods, in table order (a method added in the tree adds its entry here)
BUILTIN_METHODS: tuple[Method, ...] = (
    Method(
        "random",
        "Random init",
        "bmssl.pretrain:RunConfig",
        Untrained(),
        "the untrained encoder (seeded): the floor every pre-training must beat",
        cost=0,
    ),
    Method(
        "simclr",
        "SimCLR",
        "bmssl.simclr:SimCLRConfig",
        ByTrainer("bmssl.simclr:SimCLRTrainer"),
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
        ByTrainer("bmssl.protonet:ProtoNetTrainer"),
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
            ByTrainer("bmssl.meta:BMSSLTrainer"),
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
)
for _builtin in BUILTIN_METHODS:
    register_method(_builtin)
