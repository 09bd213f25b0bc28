"""Named search spaces: which config fields a search varies, over which values, for which methods.

A :class:`Space` declares the fields it varies (dotted for sectioned configs: BiSSL's
``bilevel.lam``, ``finetune.lr``) and the registered methods (:mod:`bmssl.methods`) it applies
to, or none, in which case it applies to every trainable method whose config has those fields and
does not fix them. Its axes are built against the search's base config, because some ranges
depend on it (δ is a multiple of the inner-loop length L; the scaling ablations are fractions of
the training set and of the step budget). Every axis names a real config field, so the best
trial's parameters drop straight into the method's config.

The spaces of this package are :data:`BUILTIN_SPACES`; a plugin (:mod:`bmssl.plugins`) adds its
own with :func:`register_space`. :data:`SPACES` holds them all once the plugins are loaded, which
importing this module does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from bmssl.errors import UserError, check_choice
from bmssl.methods import Method, list_methods
from bmssl.plugins import add_entry, load_plugins

SEARCH_ALGORITHMS = ("random", "grid")
SCHEDULERS = ("asha", "fifo")
KINDS = ("search", "ablation")
#: seeds drawn per trial come from this range (recorded in every trial's config)
SEED_RANGE = (0, 2**31 - 1)
#: seeds every arm of an ablation runs by default, so each arm has a mean and a spread
ABLATION_SEEDS = (0, 1)


@dataclass(frozen=True)
class Axis:
    """One searched config field (``name``, dotted inside a section: ``bilevel.lam``).

    ``grid`` is used by grid search; ``distribution`` (a ``ray.tune`` domain) by random search,
    falling back to a uniform choice over ``grid``. ``scale`` tells the plot how to lay out the
    x axis: ``"log"``, ``"linear"`` or ``"category"``.
    """

    name: str
    grid: tuple[Any, ...]
    distribution: Any = None
    scale: str = "linear"
    label: str = ""

    def domain(self, search: str) -> Any:
        if search == "grid":
            return tune.grid_search(list(self.grid))
        if self.distribution is not None:
            return self.distribution
        return tune.choice(list(self.grid))

    @property
    def title(self) -> str:
        return self.label or self.name

    def to_json(self) -> dict[str, Any]:
        """What a stored plan keeps (the sampler is Tune's business once a search started)."""
        return {
            "name": self.name,
            "grid": list(self.grid),
            "scale": self.scale,
            "label": self.label,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Axis:
        return cls(data["name"], tuple(data["grid"]), None, data["scale"], data.get("label", ""))


@dataclass(frozen=True)
class Space:
    """A named search: the fields it varies, the methods it applies to, how to build its axes.

    ``kind`` is ``"search"`` (look for the best configuration: random search, one seed drawn per
    trial) or ``"ablation"`` (compare arms: grid search, FIFO, every arm trained with each of
    :data:`ABLATION_SEEDS`, so the report gives each arm's mean and spread across seeds).

    ``finish`` (``"module:function"``, ``finish(trainer) -> metrics``) is a stage run after the
    trainer whose ``val_acc`` is the trial's metric (BiSSL's
    :func:`bissl.pipeline.finetune_lower_backbone` fine-tunes θ_P); the trainer's own
    validations are then reported under ``finish_prefix + key``, and ASHA cannot be used since
    no intermediate report carries the metric being optimised.
    """

    name: str
    description: str
    fields: tuple[str, ...]
    build: Callable[[Any], list[Axis]] = field(repr=False)
    methods: tuple[str, ...] | None = None
    #: other fields the axes are built from (read, not varied)
    needs: tuple[str, ...] = ()
    kind: str = "search"
    finish: str | None = None
    finish_prefix: str = ""

    @property
    def default_search(self) -> str:
        return "grid" if self.kind == "ablation" else "random"

    @property
    def default_seeds(self) -> tuple[int, ...] | None:
        return ABLATION_SEEDS if self.kind == "ablation" else None

    def default_num_samples(self, search: str) -> int:
        # Grid search already enumerates every point; random search needs a sample budget.
        return 1 if search == "grid" else 8

    def refusal(self, method: Method) -> str | None:
        """Why this space cannot search ``method`` (None when it can)."""
        if self.methods is not None and method.name not in self.methods:
            return f"it applies to: {', '.join(self.methods)}"
        if method.kind == "untrained":
            return f"method {method.name!r} is not trained"
        known = set(config_fields(method.config_class()))
        missing = [f for f in (*self.fields, *self.needs) if f not in known]
        if missing:
            return f"{method.config_class().__name__} has no {', '.join(missing)}"
        fixed = [f for f in self.fields if f in method.fixed]
        if fixed:
            return f"method {method.name!r} fixes {', '.join(f'{f}={method.fixed[f]!r}' for f in fixed)}"
        if self.finish is not None and method.kind != "trainer":
            return f"method {method.name!r} is not one trainer run"
        return None

    def check_method(self, method: Method) -> None:
        reason = self.refusal(method)
        if reason is not None:
            usable = ", ".join(m.name for m in self.applicable_methods()) or "none"
            raise UserError(
                f"space {self.name!r} does not apply to method {method.name!r}: {reason}; "
                f"methods it applies to: {usable} (list spaces with: python -m tuning spaces)"
            )

    def applicable_methods(self) -> list[Method]:
        return [m for m in list_methods() if self.refusal(m) is None]

    def axes(self, base: Any) -> list[Axis]:
        """The axes for ``base`` (the search's base config object)."""
        axes = self.build(base)
        names = {a.name for a in axes}
        if names != set(self.fields):
            raise AssertionError(f"space {self.name!r} builds {names}, declares {self.fields}")
        return axes


def config_fields(cls: type) -> list[str]:
    """Every option of a config class, dotted inside sections (``bilevel.lam``)."""
    from bmssl.config_help import iter_options

    return [name for name, _, _ in iter_options(cls)]


def field_value(config: Any, dotted: str) -> Any:
    """``config.bilevel.lam`` for ``"bilevel.lam"``."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def param_space(
    axes: Sequence[Axis], search: str, seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """The Tune ``param_space``: one entry per axis plus the trial's ``seed``.

    With ``seeds`` every configuration runs once per seed (a grid axis, so arms of an ablation
    share seeds); without, each trial draws its own seed from the seeded search generator.
    """
    check_choice("search algorithm", search, SEARCH_ALGORITHMS)
    space = {axis.name: axis.domain(search) for axis in axes}
    space["seed"] = tune.grid_search(list(seeds)) if seeds else tune.randint(*SEED_RANGE)
    return space


# -- the spaces -----------------------------------------------------------------------------


def _bissl_lambda_gamma(base: Any) -> list[Axis]:
    return [
        Axis(
            "bilevel.lam",
            (1e-4, 1e-3, 1e-2, 1e-1),
            tune.loguniform(1e-4, 1e-1),
            "log",
            "λ (lower-level coupling)",
        ),
        Axis(
            "bilevel.gamma",
            (0.01, 0.1, 1.0),
            tune.choice([0.01, 0.1, 1.0]),
            "log",
            "γ (classic downstream weight)",
        ),
    ]


DELTA_MULTIPLES = (0, 1, 2, 5, 10)


def _bmssl_delta(base: Any) -> list[Axis]:
    inner = int(base.inner_steps)
    values = tuple(k * inner for k in DELTA_MULTIPLES)
    return [
        Axis(
            "bootstrap_steps",
            values,
            tune.choice(list(values)),
            "category",
            f"δ (bootstrap steps; {'/'.join(map(str, DELTA_MULTIPLES))} × L, L={inner})",
        )
    ]


def _finetune_lr_wd(base: Any) -> list[Axis]:
    return [
        Axis(
            "finetune.lr",
            (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            tune.loguniform(1e-4, 1.0),
            "log",
            "fine-tuning lr",
        ),
        Axis(
            "finetune.weight_decay",
            (1e-5, 1e-4, 1e-3, 1e-2),
            tune.loguniform(1e-5, 1e-2),
            "log",
            "fine-tuning weight decay",
        ),
    ]


def _augment_strength(base: Any) -> list[Axis]:
    from bmssl.data.views import STRENGTHS

    return [
        Axis("augment", tuple(STRENGTHS), None, "category", "augmentation strength for the views")
    ]


SCALING_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def _scaling_images(base: Any) -> list[Axis]:
    from bmssl.pretrain import load_split

    # The training split's size decides the arms; num_train_images=None means "all of it".
    full = len(load_split(dataclasses.replace(base, num_train_images=None), "train"))
    counts = sorted({max(1, round(full * f)) for f in SCALING_FRACTIONS})
    grid: tuple[Any, ...] = (*counts, None)
    return [
        Axis("num_train_images", grid, None, "category", f"training images (None = all {full})")
    ]


def _scaling_tasks(base: Any) -> list[Axis]:
    total = int(base.steps)
    steps = tuple(sorted({max(1, round(total * f)) for f in (1 / 8, 1 / 4, 1 / 2, 1.0)}))
    per_step = int(base.meta_batch)
    return [
        Axis(
            "steps",
            steps,
            None,
            "category",
            f"meta-training steps (tasks seen = steps × meta_batch = steps × {per_step})",
        )
    ]


#: this package's spaces (a space added in the tree adds its entry here)
BUILTIN_SPACES: tuple[Space, ...] = (
    Space(
        "bissl-lambda-gamma",
        "BiSSL: λ log-uniform in [1e-4, 1e-1], γ in {0.01, 0.1, 1}; each trial ends with a "
        "fine-tune of θ_P, whose val accuracy is the metric",
        ("bilevel.lam", "bilevel.gamma"),
        _bissl_lambda_gamma,
        methods=("bissl",),
        finish="bissl.pipeline:finetune_lower_backbone",
        finish_prefix="bissl_",
    ),
    Space(
        "bmssl-delta",
        "BMSSL: bootstrap horizon δ in {0, 1, 2, 5, 10} × L (δ = 0 is meta-SSL without bootstrap)",
        ("bootstrap_steps",),
        _bmssl_delta,
        needs=("inner_steps",),
        kind="ablation",
    ),
    Space(
        "finetune-lr-wd",
        "BiSSL fine-tuning stage: lr log-uniform in [1e-4, 1], weight decay in [1e-5, 1e-2]",
        ("finetune.lr", "finetune.weight_decay"),
        _finetune_lr_wd,
        methods=("bissl-finetune",),
    ),
    Space(
        "augment-strength",
        "ablation: augmentation strength of the self-supervised views "
        "(none/weak/default/strong/affine)",
        ("augment",),
        _augment_strength,
        kind="ablation",
    ),
    Space(
        "scaling-images",
        "ablation: number of training images (1/16, 1/8, 1/4, 1/2, all of the split)",
        ("num_train_images",),
        _scaling_images,
        needs=("dataset", "data_root", "image_size"),
        kind="ablation",
    ),
    Space(
        "scaling-tasks",
        "ablation: number of meta-training tasks (1/8, 1/4, 1/2, all of the step budget)",
        ("steps",),
        _scaling_tasks,
        needs=("meta_batch",),
        kind="ablation",
    ),
)
SPACES: dict[str, Space] = {}


def register_space(space: Space, replace: bool = False) -> Space:
    """Add ``space`` to :data:`SPACES` (``replace`` to redefine an existing name)."""
    return add_entry(SPACES, space.name, space, "search space", replace)


for _builtin in BUILTIN_SPACES:
    register_space(_builtin)


def list_spaces() -> list[Space]:
    """Every registered space, built-ins first."""
    load_plugins()
    return list(SPACES.values())


def get_space(name: str) -> Space:
    """The space called ``name``; an unknown name is a :class:`UserError` listing the known."""
    load_plugins()
    check_choice("search space", name, tuple(SPACES))
    return SPACES[name]


# Plugins may add spaces: load them now, so that SPACES is complete for whoever reads it.
load_plugins()
