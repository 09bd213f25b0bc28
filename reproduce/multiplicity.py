"""Multiplicity: Holm's step-down adjustment across a table's comparisons.

A results table makes many claims at once (every row against the reference in every column,
and every pair for bold); at level 0.05 each, a table of 30 true nulls would show about 1.5
false marks. Holm's procedure (Holm 1979) controls the *family-wise* error rate, the
probability of at least one false claim in the family, at ``α`` under any dependence between
the tests, and is uniformly more powerful than Bonferroni. :func:`adjust_table` applies it to a
whole table of :func:`reproduce.inference.compare_rows` results and sets each comparison's
``sign`` from its adjusted p-value, which is what the marks and bold should read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from reproduce.inference import ALPHA, Comparisons, mirror, seeds_needed_for
from reproduce.power import min_detectable_effect


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order; ``None`` (or NaN) entries are
    untestable, left out of the family and returned as ``None``.

    With the ``m`` testable p-values sorted, ``p_(1) ≤ … ≤ p_(m)``, the adjusted values are

        p̃_(k) = max_{j ≤ k} min(1, (m − j + 1) · p_(j)),

    and rejecting every hypothesis with ``p̃ < α`` is Holm's rule (reject ``H_(1)..H_(k−1)`` where
    ``k`` is the first index with ``p_(k) ≥ α / (m − k + 1)``). It controls the family-wise error
    rate at ``α`` under any dependence between the tests. The adjusted values are monotone in
    the raw ones and never below them.
    """
    kept = [
        (float(p), i) for i, p in enumerate(p_values) if p is not None and math.isfinite(float(p))
    ]
    if any(not 0.0 <= p <= 1.0 for p, _ in kept):
        raise ValueError("p-values must lie in [0, 1]")
    kept.sort()
    m = len(kept)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(kept):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def adjust_results(results: Sequence[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Copies of one family's results (each as :func:`seed_paired_t` returns) with Holm's
    adjustment applied across them: ``p_raw`` (the test's ``p``), ``p_adjusted``
    (:func:`holm`; ``None`` if untestable), ``family_size`` (``m``, the testable members),
    ``sign_raw`` (the unadjusted sign), ``sign`` (``±1`` where ``p_adjusted < alpha``, else 0),
    and ``mde_family`` / ``seeds_needed_family``: the power figures at the Bonferroni level
    ``alpha / m``, the threshold Holm applies to the family's smallest p (so the effect one real
    difference among nulls needs to be detected with 80% power)."""
    adjusted = holm([r["p"] for r in results])
    m = sum(p is not None for p in adjusted)
    level = alpha / max(m, 1)
    out = []
    for result, p_adj in zip(results, adjusted):
        significant = p_adj is not None and p_adj < alpha
        sd = result["sd"] if result["testable"] else None
        out.append(
            {
                **result,
                "p_raw": result["p"],
                "p_adjusted": p_adj,
                "adjustment": "holm",
                "family_size": m,
                "sign_raw": result["sign"],
                "sign": int(np.sign(result["mean"])) if significant else 0,
                "mde_family": min_detectable_effect(sd, result["seeds"], level),
                "seeds_needed_family": seeds_needed_for(sd, level),
            }
        )
    return out


def table_family(
    table: Mapping[str, Mapping[tuple[str, str], dict[str, Any]]],
    include: Callable[[str, str, str], bool] | None = None,
) -> list[tuple[str, str, str]]:
    """The comparisons ``(column, a, b)`` of a whole table that form one Holm family: each
    unordered pair of rows once per column (in the orientation met first), every column, kept
    where ``include(column, a, b)`` (or its mirror) is true; all of them by default.

    ``table[column]`` is :func:`compare_rows` of that column."""
    family = []
    for column, comparisons in table.items():
        seen: set[frozenset[str]] = set()
        for a, b in comparisons:
            pair = frozenset((a, b))
            if pair in seen:
                continue
            seen.add(pair)
            if include is None or include(column, a, b) or include(column, b, a):
                family.append((column, a, b))
    return family


def adjust_table(
    table: Mapping[str, Mapping[tuple[str, str], dict[str, Any]]],
    alpha: float = ALPHA,
    include: Callable[[str, str, str], bool] | None = None,
) -> dict[str, Comparisons]:
    """Holm's adjustment across every comparison of a table; the result is what marks it.

    ``table[column]``: :func:`compare_rows` of that column. The family is :func:`table_family`
    (each unordered pair of rows in each column, once: a comparison and its mirror are one
    test); every member gets :func:`adjust_results`'s keys and its mirror the same ones negated,
    so ``sign`` (from the adjusted p at ``alpha``) is what ▲/▼ and bold should read. Pairs left
    out by ``include`` get ``p_adjusted`` ``None``, ``sign`` 0 and ``in_family`` false: no claim
    is made about them. Returns new dicts; ``table`` is not modified.
    """
    family = table_family(table, include)
    adjusted = adjust_results([table[c][a, b] for c, a, b in family], alpha)
    out: dict[str, Comparisons] = {
        column: {
            pair: {
                **result,
                "p_raw": result["p"],
                "p_adjusted": None,
                "sign_raw": result["sign"],
                "sign": 0,
                "in_family": False,
            }
            for pair, result in comparisons.items()
        }
        for column, comparisons in table.items()
    }
    for (column, a, b), result in zip(family, adjusted):
        out[column][a, b] = {**result, "in_family": True}
        out[column][b, a] = mirror(out[column][a, b])
    return out
