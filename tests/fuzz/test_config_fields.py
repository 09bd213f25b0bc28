"""Every config field of every method, of few-shot evaluation and of the table profiles, given
hostile values on the command line and in YAML files: each input either runs or exits 2 with one
line and no traceback (issue 23, items 2 and 3).

``print-config`` resolves and validates a config without training, so the properties over all
values run through it. The properties that train (``train``, ``bissl run``) draw only values that
must be refused (negative and beyond-64-bit integers, empty and blank text) and check that no run
folder is left behind; a value that is accepted after all trains the tiny base config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bmssl.config_help import iter_options
from tests.fuzz.cli import assert_runs_or_exits_2, hostile_texts, run, yaml_values

BMSSL_METHODS = ["random", "simclr", "protonet", "bmssl", "meta-ssl", "bmssl-fo"]
#: tiny settings every run-level example starts from
TINY = {
    "bmssl": [
        "dataset=digits", "width=4", "proj_hidden=8", "proj_dim=4", "task_images=3", "support_views=2",
        "query_views=1", "meta_batch=1", "steps=1", "eval_every=1", "eval_episodes=2", "device=cpu",
    ],
    "simclr": [
        "dataset=digits", "width=4", "proj_hidden=8", "proj_dim=4", "batch_size=8", "steps=1",
        "eval_every=1", "eval_episodes=2", "device=cpu",
    ],
}  # fmt: skip
TINY_BISSL = [
    "pretext.steps=1", "pretext.batch_size=8", "pretext.width=4", "pretext.proj_hidden=8",
    "pretext.proj_dim=4", "warmup.steps=1", "bilevel.alternations=1", "bilevel.lower_steps=1",
    "bilevel.upper_steps=1", "bilevel.batch_size=8", "bilevel.lower_batch_size=8",
    "finetune.steps=1", "finetune.batch_size=8", "eval_every=1", "cg.iters=1", "device=cpu",
]  # fmt: skip


def _config_class(method: str) -> type:
    from bmssl.methods import get_method

    return get_method(method).config_class()


def _fields(cls: type) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind, _ in iter_options(cls)]


def _nested(dotted: str, value: object) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _bmssl_main(argv: list[str]) -> object:
    from bmssl.__main__ import main

    return main(argv)


def _bissl_main(argv: list[str]) -> object:
    from bissl.__main__ import main

    return main(argv)


@pytest.mark.parametrize("method", [*BMSSL_METHODS, "bissl"])
@given(data=st.data(), value=hostile_texts())
def test_every_field_on_the_command_line(method, data, value):
    field, _ = data.draw(st.sampled_from(_fields(_config_class(method))), label="field")
    argv = ["print-config", f"{field}={value}"]
    if method == "bissl":
        ran = run(_bissl_main, argv)
    else:
        argv = ["print-config", method, f"{field}={value}"]
        ran = run(_bmssl_main, argv)
    assert_runs_or_exits_2(ran, argv)


@pytest.mark.parametrize("method", ["simclr", "bmssl", "bissl"])
@given(data=st.data(), value=yaml_values())
def test_every_field_in_a_config_file(method, data, value):
    field, _ = data.draw(st.sampled_from(_fields(_config_class(method))), label="field")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(_nested(field, value), allow_unicode=True))
        if method == "bissl":
            argv = ["print-config", "--config", str(path)]
            ran = run(_bissl_main, argv)
        else:
            argv = ["print-config", method, "--config", str(path)]
            ran = run(_bmssl_main, argv)
    assert_runs_or_exits_2(ran, argv)


@given(data=st.data(), value=hostile_texts())
def test_every_evaluation_option(data, value):
    from bmssl.evaluate import EvalConfig

    field, _ = data.draw(st.sampled_from(_fields(EvalConfig)), label="field")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["eval", "--checkpoint", str(Path(tmp) / "none.pt"), f"{field}={value}"]
        ran = run(_bmssl_main, argv)
    assert_runs_or_exits_2(ran, argv)


def _refused_values(kind: str) -> st.SearchStrategy[str]:
    """Values a field of type ``kind`` must refuse: integers below zero or beyond 64 bits for
    integer fields; empty, blank or wrongly typed text for text fields."""
    if kind.startswith("int"):
        return st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=2**63),
            st.integers(max_value=-(2**63) - 1),
        ).map(str)
    return st.sampled_from(["", " ", "\t", "[1, 2]", "{a: 1}", "!!binary aGk="])


def _refusable_fields(cls: type) -> list[tuple[str, str]]:
    # Fields that legitimately take a negative integer would run: there are none today, and a
    # new one shows up here as a (tiny) training run.
    return [(n, k) for n, k in _fields(cls) if k.startswith(("int", "str"))]


@pytest.mark.parametrize("method", ["simclr", "bmssl"])
@given(data=st.data())
def test_train_refuses_extreme_integers_and_empty_text_before_making_a_folder(method, data):
    field, kind = data.draw(st.sampled_from(_refusable_fields(_config_class(method))))
    value = data.draw(_refused_values(kind), label="value")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["train", method, "--quiet", "--out", str(out), *TINY[method], f"{field}={value}"]
        argv = [t for t in argv if not t.startswith(f"{field}=") or t == f"{field}={value}"]
        ran = run(_bmssl_main, argv)
        assert_runs_or_exits_2(ran, argv, out)


@given(data=st.data())
def test_bissl_refuses_extreme_integers_and_empty_text_before_making_a_folder(data):
    field, kind = data.draw(st.sampled_from(_refusable_fields(_config_class("bissl"))))
    value = data.draw(_refused_values(kind), label="value")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        base = [t for t in TINY_BISSL if not t.startswith(f"{field}=")]
        argv = ["run", "--quiet", "--out", str(out), *base, f"{field}={value}"]
        ran = run(_bissl_main, argv)
        assert_runs_or_exits_2(ran, argv, out)


def _table_profiles() -> list[tuple[type, str]]:
    profiles = pytest.importorskip("reproduce.profiles")
    found = [
        (getattr(profiles, name), table)
        for name, table in (("Table1Profile", "table1"), ("BiSSLTableProfile", "bissl"))
        if hasattr(profiles, name)
    ]
    if not found or not hasattr(profiles, "load_profile"):
        pytest.skip("reproduce.profiles has no profile classes or load_profile")
    return found


@given(data=st.data(), value=yaml_values())
def test_every_table_profile_field(data, value):
    from bmssl.errors import UserError

    profiles = pytest.importorskip("reproduce.profiles")
    cls, table = data.draw(st.sampled_from(_table_profiles()), label="profile")
    field, _ = data.draw(st.sampled_from(_fields(cls)), label="field")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.yaml"
        path.write_text(yaml.safe_dump(_nested(field, value), allow_unicode=True))
        try:
            profiles.load_profile(cls, table, str(path))
        except UserError as err:
            message = str(err)
            assert "\n" not in message.strip() or len(message.splitlines()) == 1
