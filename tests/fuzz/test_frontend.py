"""The key=value and YAML front end on hostile input (issue 23, items 2, 3 and 5): duplicate keys
(on the command line and in files), aliases, tags, arbitrary text and arbitrary argv.

A key given twice exits 2 naming both values; an alias exits 2 at once (a kilobyte of them is a
"billion laughs"); every other input runs or exits 2 with one line and no traceback.
"""

from __future__ import annotations

import string
import tempfile
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.cli import assert_runs_or_exits_2, hostile_texts, run

FIELDS = ["steps", "width", "tau", "dataset", "augment", "seed", "eval_every", "first_order"]
TAGS = [
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set",
    "!!omap", "!!pairs", "!!seq", "!!map", "!!python/object/apply:os.system",
    "!!python/name:os.system", "!!python/object:builtins.object", "!custom", "!",
    "tag:yaml.org,2002:int",
]  # fmt: skip
_KEYS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)


def _bmssl(argv: list[str]) -> object:
    from bmssl.__main__ import main

    return main(argv)


def _print_config_file(text: str) -> tuple[list[str], object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        argv = ["print-config", "bmssl", "--config", str(path)]
        return argv, run(_bmssl, argv)


@given(
    key=st.sampled_from(FIELDS), first=hostile_texts(), second=hostile_texts(), dash=st.booleans()
)
def test_a_key_given_twice_on_the_command_line_names_both(key, first, second, dash):
    spelt = key.replace("_", "-") if dash else key
    argv = ["print-config", "bmssl", f"{key}={first}", f"{spelt}={second}"]
    ran = run(_bmssl, argv)
    assert ran.code == 2, ran.out[-500:]
    line = ran.error_lines()[0]
    assert len(ran.error_lines()) == 1 and "given twice" in line and key in line
    assert repr(f"{key}={first}")[:30] in line or len(first) > 60


@given(key=st.sampled_from(FIELDS), first=st.integers(0, 50), second=st.integers(0, 50))
def test_a_key_given_twice_in_a_file_names_both(key, first, second):
    argv, ran = _print_config_file(f"{key}: {first}\nwidth_unused: 1\n{key}: {second}\n")
    assert ran.code == 2
    line = ran.error_lines()[0]
    assert "twice" in line and key in line and f"'{first}'" in line and f"'{second}'" in line


@given(section=st.sampled_from(["finetune", "bilevel", "cg"]), value=st.integers(1, 9))
def test_a_dotted_and_a_nested_key_for_the_same_option_are_a_duplicate(section, value):
    from bissl.__main__ import main

    field = {"finetune": "steps", "bilevel": "alternations", "cg": "iters"}[section]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(f"{section}.{field}: {value}\n{section}:\n  {field}: {value + 1}\n")
        ran = run(main, ["print-config", "--config", str(path)])
    assert ran.code == 2 and "twice" in ran.err and f"{section}.{field}" in ran.err


@given(anchor=_KEYS, key=st.sampled_from(FIELDS), depth=st.integers(1, 12))
def test_aliases_are_refused(anchor, key, depth):
    lines = [f"a0: &{anchor}0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &{anchor}{i} [*{anchor}{i - 1}, *{anchor}{i - 1}]" for i in range(1, depth)]
    lines.append(f"{key}: *{anchor}{depth - 1}")
    argv, ran = _print_config_file("\n".join(lines) + "\n")
    assert ran.code == 2 and "alias" in ran.err, ran.err
    assert_runs_or_exits_2(ran, argv)


def test_a_billion_laughs_config_is_refused_at_once():
    """A 1 KB file that expands to 10^9 strings: refused in well under a second."""
    lines = ['lol0: &l0 "lol"']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines.append("dataset: *l9")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1100
    start = time.perf_counter()
    argv, ran = _print_config_file(text)
    assert time.perf_counter() - start < 5.0
    assert ran.code == 2 and "alias" in ran.err
    assert_runs_or_exits_2(ran, argv)


@given(tag=st.sampled_from(TAGS), key=st.sampled_from(FIELDS), value=hostile_texts())
def test_tags(tag, key, value):
    scalar = value.replace("\n", " ").replace('"', "'")
    argv, ran = _print_config_file(f'{key}: {tag} "{scalar}"\n')
    assert_runs_or_exits_2(ran, argv)
    if "python/" in tag:
        assert ran.code == 2


@given(text=st.text(max_size=300))
def test_any_text_as_a_config_file(text):
    argv, ran = _print_config_file(text)
    assert_runs_or_exits_2(ran, argv)


_TOKENS = st.one_of(
    st.sampled_from(
        ["--config", "--out", "--quiet", "--skip-corrupt", "--help=x", "-", "--", "bmssl", "="]
    ),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELDS), hostile_texts()),
    st.text(max_size=12),
)


@given(tokens=st.lists(_TOKENS, max_size=6))
def test_any_argv_of_print_config(tokens):
    argv = ["print-config", *tokens]
    ran = run(_bmssl, argv)
    assert_runs_or_exits_2(ran, argv)
