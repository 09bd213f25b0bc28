from dataclasses import dataclass

import pytest

from bmssl.baselines import SimCLRConfig
from bmssl.config import config_to_yaml, load_config, parse_overrides
from bmssl.errors import UserError


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
    from bmssl.config import parse_args_with_overrides

    args = parse_args_with_overrides(_parser(), ["train", "a=1", "--out", "x", "b=2"])
    assert args.overrides == ["a=1", "b=2"] and str(args.out) == "x"
    args = parse_args_with_overrides(build_parser(), ["run", "--config", "c.yaml", "steps=5"])
    assert args.overrides == ["steps=5"] and args.config == "c.yaml"
    for parser, argv in [
        (_parser(), ["eval", "--out", "x", "steps=5"]),  # eval takes no overrides
        (build_parser(), ["run", "--out", "x", "junk"]),
        (build_parser(), ["run", "--out", "x", "--bogus=1"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parse_args_with_overrides(parser, argv)
        assert exit_info.value.code == 2
