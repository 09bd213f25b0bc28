from dataclasses import dataclass, field

import pytest

from bmssl.config import config_to_yaml, load_config, parse_overrides
from bmssl.config_help import options_help
from bmssl.errors import UserError
from bmssl.simclr import SimCLRConfig


@dataclass
class Small:
    lr: float = 0.1
    steps: int = 10
    name: str = "a"
    flag: bool = False
    root: str | None = None
    sizes: list[int] | None = None


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nsteps: 20\n")
    cfg = load_config(Small, path, ["steps=30", "flag=true", "root=none", "sizes=[1,2]"])
    assert cfg == Small(lr=0.5, steps=30, name="a", flag=True, root=None, sizes=[1, 2])


def test_yaml_round_trip(tmp_path):
    cfg = SimCLRConfig(lr=0.02, steps=7, data_root="/x")
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(SimCLRConfig, path) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lrr=1", "unknown Small option"),
        ("steps=1.5", "steps='1.5' is not an integer"),
        ("lr=fast", "lr='fast' is not a number"),
        ("flag=maybe", "not a boolean"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        load_config(Small, None, [override])


def test_validate_runs_on_load():
    with pytest.raises(UserError, match="lr must be positive"):
        load_config(SimCLRConfig, None, ["lr=0"])
    with pytest.raises(UserError, match="temperature must be positive"):
        load_config(SimCLRConfig, None, ["temperature=-1"])


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Small, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(Small, bad)


def test_parse_overrides_dashes():
    assert parse_overrides(["inner-lr=0.1"]) == {"inner_lr": "0.1"}


def test_overrides_may_follow_options():
    """``train --config c.yaml steps=5`` and ``run --out d x=1`` work; stray words exit 2."""
    from bissl.__main__ import build_parser
    from bmssl.__main__ import _parser
    from bmssl.cli import parse_args

    args = parse_args(_parser(None), ["train", "a=1", "--out", "x", "b=2"], positional=True)
    assert args.overrides == ["a=1", "b=2"] and str(args.out) == "x"
    args = parse_args(_parser(None), ["train", "--out", "x", "simclr", "b=2"], positional=True)
    assert args.overrides == ["simclr", "b=2"]
    args = parse_args(build_parser(), ["run", "--config", "c.yaml", "pretext.steps=5"])
    assert args.overrides == ["pretext.steps=5"] and args.config == "c.yaml"
    for parser, argv in [
        (_parser(None), ["export", "--out", "x", "--bogus"]),
        (build_parser(), ["run", "--out", "x", "junk"]),
        (build_parser(), ["run", "--out", "x", "--bogus=1"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parse_args(parser, argv)
        assert exit_info.value.code == 2


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 3


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    options: dict = field(default_factory=dict)


def test_sections_take_dotted_overrides_and_nested_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 0.5\nname: y\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "options={a: 1}"])
    assert cfg == Outer(name="y", inner=Inner(lr=0.5, steps=7), options={"a": 1})
    assert load_config(Outer, path, {"inner": {"steps": 2}}).inner == Inner(lr=0.5, steps=2)
    yaml_path = tmp_path / "round.yaml"
    yaml_path.write_text(config_to_yaml(cfg))
    assert load_config(Outer, yaml_path) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.lrr=1", "unknown Outer option.s. in section inner: inner.lrr"),
        ("inner=3", "inner is a section"),
        ("name.x=1", "name is not a section"),
        ("options=[1,2]", "not a mapping"),
        ("inner.steps=abc", "inner.steps='abc' is not an integer"),
    ],
)
def test_bad_section_overrides(override, message):
    with pytest.raises(UserError, match=message):
        load_config(Outer, None, [override])


def test_options_help_lists_every_dotted_option_with_type_and_default():
    text = options_help(Outer)
    assert "inner.lr" in text and "float, default 0.1" in text and "inner.steps" in text


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(UserError) as info:
        load_config(Small, bad)
    assert "\n" not in str(info.value) and "line" in str(info.value)
    with pytest.raises(UserError, match="is a folder"):
        load_config(Small, tmp_path)
