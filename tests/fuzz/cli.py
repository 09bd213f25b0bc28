"""Running a command-line ``main`` in this process and checking what a user would see."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run(main: Callable[..., object], argv: Sequence[str]) -> Ran:
    """``main(argv)`` with stdout and stderr captured; any exception but SystemExit escapes
    (a traceback the user would see fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            result = main(list(argv))
            code = result if isinstance(result, int) else 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


def assert_runs_or_exits_2(ran: Ran, argv: Sequence[str], out: Path | None = None) -> None:
    """The contract: exit 0, or exit 2 with ONE ``error:`` line, no traceback, and (``out``)
    no run folder left behind."""
    assert "Traceback" not in ran.err, ran.err
    assert ran.code in (0, 2), f"exit {ran.code} for {list(argv)}: {ran.err[-2000:]}"
    if ran.code == 2:
        lines = ran.error_lines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (list(argv), ran.err)
        assert len(lines[0]) <= 1100, f"unbounded message ({len(lines[0])} characters)"
        if out is not None:
            assert not out.exists(), f"exit 2 left {out} behind ({list(argv)}): {lines[0]}"


# -- hostile values ------------------------------------------------------------------------

EXTREME_INTS = [
    0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
    2**64, 10**30, -(10**30), 10**400,
]  # fmt: skip
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, -1e-300, 1e400]
ODD_TEXTS = [
    "", " ", "\t", "null", "None", "~", "true", "no", "[]", "{}", "[1, 2]", "{a: 1}", "&a x",
    "*a", "!!binary aGk=", "!!python/object/apply:os.system [id]", "1e400", "-1e400", "nan",
    "0x10", "1_000", "+5", "--5", "٣", "ǅǅ", "é\u0301", "🙂", "a\nb", "x" * 3000, "9" * 5000,
    "key=value", "a.b.c", "../..", "/", "~/x",
]  # fmt: skip
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def hostile_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EXTREME_INTS), st.integers(), st.integers(-(2**70), 2**70))


def hostile_texts() -> st.SearchStrategy[str]:
    """Text for a ``key=value`` token: numbers at and beyond every limit, wrong types written
    as YAML, empty and blank strings, unicode, long strings."""
    return st.one_of(
        st.sampled_from(ODD_TEXTS),
        hostile_ints().map(str),
        st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats()).map(repr),
        st.text(_CHARS, max_size=40),
    )


def yaml_values() -> st.SearchStrategy[object]:
    """A value of any YAML type (for a config file): scalars at their limits, lists, maps."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        hostile_ints(),
        st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats()),
        st.text(_CHARS, max_size=30),
        st.sampled_from(ODD_TEXTS),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(_CHARS, max_size=8), inner, max_size=3),
        ),
        max_leaves=6,
    )
