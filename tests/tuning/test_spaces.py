"""tuning.spaces: the axes of each space, which methods a space applies to, Tune's param space."""

from __future__ import annotations

import pytest

from bmssl.errors import UserError
from bmssl.methods import get_method
from tests.tuning.helpers import register_toy
from tuning import spaces as sp


def _base(method: str, **overrides):
    return get_method(method).load_config(None, overrides)


def test_bissl_lambda_gamma_ranges_name_dotted_fields():
    from ray.tune.search.sample import Float

    axes = {a.name: a for a in sp.get_space("bissl-lambda-gamma").axes(_base("bissl"))}
    assert set(axes) == {"bilevel.lam", "bilevel.gamma"}
    lam = axes["bilevel.lam"].distribution
    assert isinstance(lam, Float) and (lam.lower, lam.upper) == (1e-4, 1e-1)
    assert isinstance(lam.get_sampler(), Float._LogUniform)
    assert set(axes["bilevel.gamma"].grid) == {0.01, 0.1, 1.0}
    assert set(axes["bilevel.gamma"].distribution.categories) == {0.01, 0.1, 1.0}
    assert axes["bilevel.lam"].grid[0] == 1e-4 and axes["bilevel.lam"].grid[-1] == 1e-1


def test_bmssl_delta_is_multiples_of_inner_steps():
    (axis,) = sp.get_space("bmssl-delta").axes(_base("bmssl", inner_steps=3))
    assert axis.name == "bootstrap_steps"
    assert axis.grid == (0, 3, 6, 15, 30)
    assert sp.get_space("bmssl-delta").default_search == "grid"


def test_finetune_space_bounds_and_method():
    space = sp.get_space("finetune-lr-wd")
    space.check_method(get_method("bissl-finetune"))
    with pytest.raises(UserError, match="applies to: bissl-finetune"):
        space.check_method(get_method("bissl"))
    axes = {a.name: a for a in space.axes(_base("bissl-finetune"))}
    lr, wd = axes["finetune.lr"].distribution, axes["finetune.weight_decay"].distribution
    assert (lr.lower, lr.upper) == (1e-4, 1.0) and (wd.lower, wd.upper) == (1e-5, 1e-2)


def test_ablation_spaces():
    from bmssl.data.views import STRENGTHS

    base = _base("bmssl", dataset="digits", task_images=2, steps=80)
    (aug,) = sp.get_space("augment-strength").axes(base)
    assert aug.grid == tuple(STRENGTHS)
    (images,) = sp.get_space("scaling-images").axes(base)
    assert images.grid[-1] is None and list(images.grid[:-1]) == sorted(images.grid[:-1])
    (steps,) = sp.get_space("scaling-tasks").axes(base)
    assert steps.grid == (10, 20, 40, 80)


@pytest.mark.parametrize(
    "name", ["bmssl-delta", "augment-strength", "scaling-images", "scaling-tasks"]
)
def test_ablations_run_two_seeds_per_arm_on_a_grid_by_default(name):
    space = sp.get_space(name)
    assert space.kind == "ablation" and space.default_search == "grid"
    assert space.default_seeds is not None and len(space.default_seeds) >= 2


@pytest.mark.parametrize("name", sorted(sp.SPACES))
def test_every_axis_is_a_real_config_field_of_every_method_it_applies_to(name):
    space = sp.SPACES[name]
    methods = space.applicable_methods()
    assert methods, f"{name} applies to no registered method"
    for method in methods:
        base = _base(method.name, **({"dataset": "digits"} if name == "scaling-images" else {}))
        fields = set(sp.config_fields(method.config_class()))
        assert {a.name for a in space.axes(base)} <= fields


def test_a_space_applies_to_registered_methods_that_have_its_fields():
    toy = register_toy()  # a method of no package of the harness, with an `augment` field
    augment = sp.get_space("augment-strength")
    assert toy in augment.applicable_methods()
    assert {"simclr", "bmssl"} <= {m.name for m in augment.applicable_methods()}
    with pytest.raises(UserError, match="ToyConfig has no bootstrap_steps"):
        sp.get_space("bmssl-delta").check_method(toy)
    # meta-ssl fixes δ = 0, so a δ search cannot vary it; random init is not trained
    with pytest.raises(UserError, match="fixes bootstrap_steps=0"):
        sp.get_space("bmssl-delta").check_method(get_method("meta-ssl"))
    with pytest.raises(UserError, match="not trained"):
        sp.get_space("scaling-images").check_method(get_method("random"))


def test_param_space_grid_random_and_seeds():
    from ray.tune.search.sample import Categorical, Integer

    axes = sp.get_space("bissl-lambda-gamma").axes(_base("bissl"))
    grid = sp.param_space(axes, "grid", seeds=[0, 1])
    assert grid["bilevel.lam"] == {"grid_search": [1e-4, 1e-3, 1e-2, 1e-1]}
    assert grid["seed"] == {"grid_search": [0, 1]}
    rand = sp.param_space(axes, "random")
    assert isinstance(rand["bilevel.gamma"], Categorical) and isinstance(rand["seed"], Integer)


def test_unknown_space_and_wrong_method_are_user_errors():
    with pytest.raises(UserError, match="bmssl-delta"):
        sp.get_space("delta")
    with pytest.raises(UserError, match="does not apply to method 'bissl'"):
        sp.get_space("bmssl-delta").check_method(get_method("bissl"))


def test_axis_round_trips_through_json():
    (axis,) = sp.get_space("scaling-tasks").axes(_base("bmssl", steps=80))
    back = sp.Axis.from_json(axis.to_json())
    assert (back.name, back.grid, back.scale, back.title) == (
        axis.name,
        axis.grid,
        axis.scale,
        axis.title,
    )


def test_register_space_adds_a_space_every_look_up_sees():
    space = sp.Space(
        "toy-steps", "a test space", ("steps",), lambda b: [sp.Axis("steps", (1, 2))], ("toy",)
    )
    try:
        assert sp.register_space(space) is space and sp.register_space(space) is space
        register_toy()
        assert sp.get_space("toy-steps") is space and space in sp.list_spaces()
        assert [m.name for m in space.applicable_methods()] == ["toy"]
        with pytest.raises(ValueError, match="already registered"):
            sp.register_space(sp.Space("toy-steps", "another", ("steps",), space.build))
    finally:
        sp.SPACES.pop("toy-steps", None)


def test_spaces_ask_a_method_how_it_trains():
    """A final stage needs one trainer run; an untrained method has nothing to search."""
    assert get_method("bissl").kind == "trainer" and get_method("random").kind == "untrained"
    finetune_only = get_method("bissl-finetune")
    assert finetune_only.kind == "runner"
    with pytest.raises(UserError, match="not one trainer run|applies to: bissl"):
        sp.get_space("bissl-lambda-gamma").check_method(finetune_only)
    assert sp.get_space("bissl-lambda-gamma").finish == "bissl.pipeline:finetune_lower_backbone"
