"""Named search spaces: which config fields a search varies, over which values, for which method.

A space is built against the search's base config, because some ranges depend on it (δ is a
multiple of the inner-loop length L; the scaling ablations are fractions of the training set
and of the step budget). Every axis names a real config field, so the best trial's parameters
drop straight into the trainer's config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from bmssl.errors import UserError, check_choice

SEARCH_ALGORITHMS = ("random", "grid")
SCHEDULERS = ("asha", "fifo")
#: seeds drawn per trial come from this range (recorded in every trial's config)
SEED_RANGE = (0, 2**31 - 1)


@dataclass(frozen=True)
class Axis:
    """One searched config field.

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


@dataclass(frozen=True)
class Space:
    """A named search: the methods it applies to and how to build its axes from a base config.

    ``targets`` maps the command-line method (``bissl``, ``bmssl``, ``simclr``) to the trainer
    target that runs it (see :mod:`tuning.methods`); the fine-tuning search, for instance,
    runs the BiSSL fine-tune stage, not the bilevel trainer. ``kind`` is ``"search"`` (ASHA by
    default: stop poor trials early) or ``"ablation"`` (FIFO by default: every arm runs to the
    end so that the ablation curve compares equals).
    """

    name: str
    description: str
    targets: Mapping[str, str]
    build: Callable[[Any], list[Axis]] = field(repr=False)
    kind: str = "search"
    #: grid for spaces whose axes are a handful of discrete values, random otherwise
    default_search: str = "random"

    def target_for(self, method: str) -> str:
        if method not in self.targets:
            raise UserError(
                f"space {self.name!r} does not apply to method {method!r}; it applies to: "
                f"{', '.join(self.targets)}. List spaces with: python -m tuning spaces"
            )
        return self.targets[method]

    def axes(self, base: Any) -> list[Axis]:
        """The axes for ``base`` (the search's base config object); checks the fields exist."""
        axes = self.build(base)
        for axis in axes:
            if not hasattr(base, axis.name):
                raise UserError(
                    f"space {self.name!r} searches {axis.name!r}, which "
                    f"{type(base).__name__} does not have; this checkout's config and the "
                    "space disagree"
                )
        return axes

    @property
    def default_scheduler(self) -> str:
        return "asha" if self.kind == "search" else "fifo"

    def default_num_samples(self, search: str) -> int:
        # Grid search already enumerates every point; random search needs a sample budget.
        return 1 if search == "grid" else 8


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
            "lam",
            (1e-4, 1e-3, 1e-2, 1e-1),
            tune.loguniform(1e-4, 1e-1),
            "log",
            "λ (lower-level coupling)",
        ),
        Axis(
            "gamma",
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
            "finetune_lr",
            (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            tune.loguniform(1e-4, 1.0),
            "log",
            "fine-tuning lr",
        ),
        Axis(
            "finetune_wd",
            (1e-5, 1e-4, 1e-3, 1e-2),
            tune.loguniform(1e-5, 1e-2),
            "log",
            "fine-tuning weight decay",
        ),
    ]


def _augment_strength(base: Any) -> list[Axis]:
    from bmssl.data.views import STRENGTHS

    return [
        Axis(
            "augment",
            tuple(STRENGTHS),
            None,
            "category",
            "augmentation strength for task construction",
        )
    ]


SCALING_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def _scaling_images(base: Any) -> list[Axis]:
    from bmssl.baselines import load_split

    # The training split's size decides the arms; num_train_images=None means "all of it".
    full = len(load_split(_with(base, num_train_images=None), "train"))
    counts = sorted({max(1, round(full * f)) for f in SCALING_FRACTIONS})
    grid: tuple[Any, ...] = (*counts, None)
    return [
        Axis(
            "num_train_images",
            grid,
            None,
            "category",
            f"meta-training images (None = all {full})",
        )
    ]


def _scaling_tasks(base: Any) -> list[Axis]:
    total = int(base.steps)
    steps = tuple(sorted({max(1, round(total * f)) for f in (1 / 8, 1 / 4, 1 / 2, 1.0)}))
    per_step = int(getattr(base, "meta_batch", 1))
    return [
        Axis(
            "steps",
            steps,
            None,
            "category",
            f"meta-training steps (tasks seen = steps × meta_batch = steps × {per_step})",
        )
    ]


def _with(config: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, **changes)


SPACES: dict[str, Space] = {
    s.name: s
    for s in (
        Space(
            "bissl-lambda-gamma",
            "BiSSL: λ log-uniform in [1e-4, 1e-1], γ in {0.01, 0.1, 1}",
            {"bissl": "bissl"},
            _bissl_lambda_gamma,
        ),
        Space(
            "bmssl-delta",
            "BMSSL: bootstrap horizon δ in {0, 1, 2, 5, 10} × L (δ = 0 is meta-SSL without "
            "bootstrap)",
            {"bmssl": "bmssl"},
            _bmssl_delta,
            default_search="grid",
        ),
        Space(
            "finetune-lr-wd",
            "BiSSL fine-tuning stage: lr log-uniform in [1e-4, 1], weight decay in [1e-5, 1e-2]",
            {"bissl": "bissl-finetune"},
            _finetune_lr_wd,
        ),
        Space(
            "augment-strength",
            "ablation: augmentation strength used to construct the self-supervised tasks "
            "(none/weak/default/strong)",
            {"bmssl": "bmssl", "simclr": "simclr"},
            _augment_strength,
            kind="ablation",
            default_search="grid",
        ),
        Space(
            "scaling-images",
            "ablation: number of meta-training images (1/16, 1/8, 1/4, 1/2, all of the split)",
            {"bmssl": "bmssl", "simclr": "simclr"},
            _scaling_images,
            kind="ablation",
            default_search="grid",
        ),
        Space(
            "scaling-tasks",
            "ablation: number of meta-training tasks (1/8, 1/4, 1/2, all of the step budget)",
            {"bmssl": "bmssl"},
            _scaling_tasks,
            kind="ablation",
            default_search="grid",
        ),
    )
}

METHODS = tuple(sorted({m for s in SPACES.values() for m in s.targets}))


def get_space(name: str) -> Space:
    """The space called ``name``; an unknown name is a :class:`UserError` listing the known."""
    check_choice("search space", name, tuple(SPACES))
    return SPACES[name]
