"""``--help`` lists the defaults in force: for every method and section, each option's default
in the help equals the value ``print-config`` prints (no preset, no override)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from bissl.__main__ import main as bissl_main
from bmssl.__main__ import main as bmssl_main
from bmssl.methods import list_methods

ROW = re.compile(r"^  (\S+)\s+.+, default (.*)$")


def _help_defaults(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    epilog = text.split("defaults in force:\n", 1)[1]
    rows = [ROW.match(line) for line in epilog.splitlines()]
    return {m.group(1): m.group(2) for m in rows if m}


def _printed(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _assert_same(helped: dict, printed: dict, where: str) -> None:
    assert helped, f"{where}: --help lists no options"
    for name, shown in helped.items():
        assert shown == repr(_lookup(printed, name)), f"{where}: {name}"


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_train_help_shows_the_config_print_config_prints(method, capsys):
    helped = _help_defaults(bmssl_main, ["train", method], capsys)
    _assert_same(helped, _printed(bmssl_main, ["print-config", method], capsys), method)
    assert _help_defaults(bmssl_main, ["print-config", method], capsys) == helped


@pytest.mark.parametrize("verb", ["run", "baseline", "pretext", "print-config"])
def test_bissl_help_shows_the_config_print_config_prints(verb, capsys):
    helped = _help_defaults(bissl_main, [verb], capsys)
    assert any(name.startswith("pretext.") for name in helped)  # sections are listed
    _assert_same(helped, _printed(bissl_main, ["print-config"], capsys), f"bissl {verb}")


def test_an_old_option_name_names_the_new_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        bmssl_main(["print-config", "bmssl", "n_way=4"])
    assert exit_.value.code == 2
    assert "n_way -> task_images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        bissl_main(["print-config", "finetune.wd=0.1"])
    assert exit_.value.code == 2
    assert "finetune.wd -> finetune.weight_decay" in capsys.readouterr().err
