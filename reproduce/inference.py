"""Seed-level inference for the results tables: paired t across seeds, pooled claims, Holm.

The unit of replication is a trained model, i.e. a seed. Within seed ``s`` two rows ``a`` and
``b`` were evaluated on the same ``E_s`` episodes, so the paired per-seed difference is

    d_s = (1/E_s) Σ_i (a_s[i] − b_s[i]),   s = 1..S.

The episodes make each ``d_s`` precise, but they are not replicates: a second episode set
measures the *same two models* again. The ``d_s`` are independent across seeds (each seed
retrains both rows), so the test of "the rows differ" is the one-sample t-test on ``d_1..d_S``:

    mean = d̄ = (1/S) Σ_s d_s,   sd = sqrt(Σ_s (d_s − d̄)² / (S − 1)),   se = sd / sqrt(S),
    T = d̄ / se,   df = S − 1,   p = 2 · P(t_df > |T|)   (two-sided),
    interval: d̄ ± t_{df, 1−α/2} · se   (contains 0 exactly when p ≥ α).

It is exact when the ``d_s`` are normal, which a mean over hundreds of episodes of a model
whose accuracy varies smoothly with the seed makes nearly so; its null false-positive rate is
checked in ``tests/reproduce/test_calibration.py`` on simulated and on real harness models at
3, 5 and 10 seeds. With one seed, or with all ``d_s`` equal (e.g. two identical rows), ``sd``
is 0 or undefined, so there is no test: the result says ``testable: False`` with a reason, and
``p`` is ``None``. The hierarchical bootstrap (:func:`reproduce.stats.paired_difference`) that
used to decide the marks treats 3 seeds as the population and rejects a true null 16–25% of the
time at 3 seeds; it is kept for old JSON and decides nothing.

The episode noise alone (the models held fixed) is reported beside the test as
``episode_noise_half_width``: ``z_{1−α/2} · sqrt(Σ_s v_s / E_s) / S`` with ``v_s`` the sample
variance of ``a_s[i] − b_s[i]`` over episodes. It says how precisely the episodes pinned the
``d_s`` down, not whether the rows differ.

Every result is a JSON-able dict (plain floats, ints, lists, ``None``; never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy import special

from reproduce.power import TARGET_POWER, min_detectable_effect, seeds_needed

#: level of every test and of the Holm adjustment
ALPHA = 0.05
#: true differences (points of accuracy) for which each comparison reports the seeds needed
EFFECTS = (1.0, 2.0)
#: the per-seed differences count as all equal when their sd is below this times their scale
_TIE_RTOL = 1e-9

Comparisons = dict[tuple[str, str], dict[str, Any]]


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def paired_episode_differences(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``[a_s − b_s]`` per seed (float64, flat), after checking that the rows pair up: the same
    seeds, and within a seed the same non-zero number of episodes. Raises ``ValueError``."""
    if len(a) != len(b):
        raise ValueError(f"paired rows need the same seeds: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("a paired comparison needs at least one seed")
    diffs = []
    for s, (xa, xb) in enumerate(zip(a, b)):
        xa = np.asarray(xa, dtype=np.float64).ravel()
        xb = np.asarray(xb, dtype=np.float64).ravel()
        if xa.size != xb.size:
            raise ValueError(
                f"seed {s}: {xa.size} vs {xb.size} episodes; paired rows must share the episodes"
            )
        if xa.size == 0:
            raise ValueError(f"seed {s} has no episodes")
        diffs.append(xa - xb)
    return diffs


def seed_differences(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(d, v, E)``: per-seed mean paired differences ``d_s = mean_i(a_s[i] − b_s[i])``, the
    episode-noise variance of each, ``v_s = var_i(a_s[i] − b_s[i]) / E_s`` (``ddof=1``; NaN when
    ``E_s = 1``), and the episode counts ``E_s``. Seeds may differ in episode count; within a
    seed both rows must share the episodes. Raises ``ValueError`` if they do not pair up."""
    means, noise, counts = [], [], []
    for s, diff in enumerate(paired_episode_differences(a, b)):
        if not np.all(np.isfinite(diff)):
            raise ValueError(f"seed {s} has a non-finite accuracy")
        means.append(diff.mean())
        noise.append(diff.var(ddof=1) / diff.size if diff.size > 1 else math.nan)
        counts.append(int(diff.size))
    return np.asarray(means), np.asarray(noise), counts


def paired_t_pvalues(differences: np.ndarray) -> np.ndarray:
    """Two-sided p-values of the one-sample t-test of ``differences`` along the last axis
    (``T = mean / (sd / sqrt(S))``, ``df = S − 1``), vectorised over the leading axes; NaN where
    the test is undefined (one seed, or all differences equal). The same rule as
    :func:`seed_paired_t`, for simulations of many tables at once."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.shape[-1]
    if n < 2:
        return np.full(d.shape[:-1], np.nan)
    mean = d.mean(axis=-1)
    sd = d.std(axis=-1, ddof=1)
    scale = np.maximum(1.0, np.abs(d).max(axis=-1))
    testable = sd > _TIE_RTOL * scale
    t = np.divide(mean * math.sqrt(n), sd, out=np.zeros_like(mean), where=testable)
    return np.where(testable, 2.0 * special.stdtr(n - 1, -np.abs(t)), np.nan)


def seed_paired_t(
    differences: Sequence[float] | np.ndarray,
    alpha: float = ALPHA,
    episode_noise: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """The paired t-test across seeds from the per-seed differences ``d_1..d_S`` (see the module
    docstring for the statistic), with its power figures.

    Returns ``test``; ``mean`` (``d̄``); ``lo``, ``hi``, ``half_width`` (the ``1 − alpha``
    t-interval across seeds); ``sd``; ``t``; ``df`` (``S − 1``); ``p`` (two-sided); ``alpha``;
    ``seeds``; ``seed_means`` (the ``d_s``); ``testable`` and ``reason`` (why not, else
    ``None``); ``sign``: ``+1``/``−1`` if ``p < alpha`` and ``d̄`` is positive/negative, else 0
    (unadjusted: :func:`reproduce.multiplicity.adjust_table` resets it from the Holm-adjusted
    p); ``mde``: the true difference detected with 80% power (``mde_power``) at ``alpha`` given
    the observed ``sd`` (:func:`reproduce.power.min_detectable_effect`); ``seeds_needed``:
    ``{"1": S₁, "2": S₂}``, the seeds needed to detect 1 and 2 points so
    (:func:`reproduce.power.seeds_needed`, ``None`` if over 1000); ``episode_noise_half_width``
    from ``episode_noise`` (the ``v_s``) when given, else ``None``.
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("seed_paired_t needs at least one finite per-seed difference")
    n = int(d.size)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    reason = None
    if n < 2:
        reason = "one seed: the spread across seeds is unknown, so there is no test"
    elif not sd > _TIE_RTOL * max(1.0, float(np.abs(d).max())):
        reason = "every seed gives the same difference (sd 0, e.g. identical rows): no t statistic"
    t = p = lo = hi = half = None
    if reason is None:
        se = sd / math.sqrt(n)
        t = mean / se
        p = float(2.0 * special.stdtr(n - 1, -abs(t)))  # 2·P(t_df > |T|)
        half = float(special.stdtrit(n - 1, 1.0 - alpha / 2.0)) * se  # t_{df,1−α/2}·se
        lo, hi = mean - half, mean + half
    sign = int(np.sign(mean)) if p is not None and p < alpha else 0
    noise = None
    if episode_noise is not None:
        v = np.asarray(episode_noise, dtype=np.float64).ravel()
        noise = float(special.ndtri(1.0 - alpha / 2.0)) * math.sqrt(v.sum()) / n
    sd_or_none = _finite_or_none(sd)
    return {
        "test": "paired t across seeds",
        "mean": mean,
        "lo": lo,
        "hi": hi,
        "half_width": half,
        "sd": sd_or_none,
        "t": t,
        "df": n - 1,
        "p": p,
        "alpha": alpha,
        "seeds": n,
        "seed_means": [float(x) for x in d],
        "testable": reason is None,
        "reason": reason,
        "sign": sign,
        "mde": min_detectable_effect(sd_or_none, n, alpha) if reason is None else None,
        "mde_power": TARGET_POWER,
        "seeds_needed": seeds_needed_for(sd_or_none if reason is None else None, alpha),
        "episode_noise_half_width": _finite_or_none(noise),
    }


def seeds_needed_for(sd: float | None, alpha: float = ALPHA) -> dict[str, int | None]:
    """``{"1": S₁, "2": S₂}``: :func:`reproduce.power.seeds_needed` for each of :data:`EFFECTS`."""
    return {f"{effect:g}": seeds_needed(effect, sd, alpha) for effect in EFFECTS}


def paired_t_test(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], alpha: float = ALPHA
) -> dict[str, Any]:
    """:func:`seed_paired_t` of rows ``a − b`` from their per-seed episode accuracies (``a[s]``,
    ``b[s]``: the same episodes of seed ``s``), with ``episodes`` (per seed) added."""
    d, noise, counts = seed_differences(a, b)
    return {**seed_paired_t(d, alpha, noise), "episodes": counts}


def pooled_paired_t(
    a: Mapping[str, Sequence[np.ndarray]],
    b: Mapping[str, Sequence[np.ndarray]],
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """One test of a claim over several columns of the same two rows, e.g. "BMSSL > SimCLR on
    digits" pooling that dataset's cells.

    ``a[column]``, ``b[column]``: per-seed episode accuracies, the same seeds in every column.
    Per seed the column differences are averaged, ``d_s = (1/C) Σ_c d_{c,s}`` (each column
    weighs the same whatever its episode count), then :func:`seed_paired_t` runs on the ``d_s``
    (``df = S − 1``). The columns of one seed come from the same two trained models, so they are
    correlated; averaging them within the seed keeps that correlation out of the test, and the
    seeds remain the independent replicates. Adds ``columns`` (their names), ``column_means``
    (each column's ``d̄_c``) and ``episodes`` (``{column: per-seed counts}``).
    """
    columns = list(a)
    if not columns or set(columns) != set(b):
        raise ValueError(f"pooled rows need the same columns: {sorted(a)} vs {sorted(b)}")
    per_column = {c: seed_differences(a[c], b[c]) for c in columns}
    seeds = {len(d) for d, _, _ in per_column.values()}
    if len(seeds) != 1:
        raise ValueError(f"every pooled column needs the same seeds, got counts {sorted(seeds)}")
    d = np.mean([per_column[c][0] for c in columns], axis=0)
    noise = np.sum([per_column[c][1] for c in columns], axis=0) / len(columns) ** 2
    return {
        **seed_paired_t(d, alpha, noise),
        "test": "paired t across seeds, pooled over columns",
        "columns": columns,
        "column_means": [float(per_column[c][0].mean()) for c in columns],
        "episodes": {c: per_column[c][2] for c in columns},
    }


def mirror(result: dict[str, Any]) -> dict[str, Any]:
    """The comparison ``b − a`` from that of ``a − b`` (also after Holm's adjustment): the same
    test with every signed figure negated (``p``, ``sd``, MDE and seed counts unchanged)."""

    def neg(x: float | None) -> float | None:
        return None if x is None else -x

    out = {
        **result,
        "mean": -result["mean"],
        "lo": neg(result["hi"]),
        "hi": neg(result["lo"]),
        "t": neg(result["t"]),
        "seed_means": [-m for m in result["seed_means"]],
        "sign": -result["sign"],
    }
    if "sign_raw" in result:
        out["sign_raw"] = -result["sign_raw"]
    if "bootstrap" in result:
        boot = result["bootstrap"]
        out["bootstrap"] = {**boot, "mean": -boot["mean"], "lo": -boot["hi"], "hi": -boot["lo"]}
    return out


def compare_rows(
    cells: Mapping[str, Sequence[np.ndarray]],
    *,
    alpha: float = ALPHA,
    n_boot: int | None = None,
    seed: int = 0,
) -> Comparisons:
    """:func:`paired_t_test` ``(A − B)`` of one column for every ordered pair of rows.

    ``cells[row]``: that row's per-seed episode accuracies. Each unordered pair is tested once
    and its mirror is the exact negation. The signs are *unadjusted*; run
    :func:`reproduce.multiplicity.adjust_table` on the whole table before marking cells.
    ``n_boot``: also attach the old hierarchical bootstrap interval as ``bootstrap`` (``mean``,
    ``lo``, ``hi``, ``n_boot``; seeded by ``seed``), for comparison with tables made before; it
    decides nothing.
    """
    out: Comparisons = {}
    for first, second in combinations(cells, 2):
        result = paired_t_test(cells[first], cells[second], alpha)
        if n_boot:
            from reproduce.stats import paired_difference

            boot = paired_difference(cells[first], cells[second], n_boot, seed, 1.0 - alpha)
            result["bootstrap"] = {k: boot[k] for k in ("mean", "lo", "hi")} | {"n_boot": n_boot}
        out[first, second] = result
        out[second, first] = mirror(result)
    return out


def beats_all(comparisons: Mapping[tuple[str, str], dict[str, Any]], row: str) -> bool:
    """Whether ``row`` is significantly better than every other row of ``comparisons`` (each
    ``sign`` of ``row − other`` is +1); the condition for bold. Pass the comparisons of
    :func:`reproduce.multiplicity.adjust_table` so that the signs are the family-adjusted ones."""
    others = [pair for pair in comparisons if pair[0] == row]
    return bool(others) and all(comparisons[pair]["sign"] > 0 for pair in others)


def comparisons_json(
    comparisons: Mapping[tuple[str, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Comparisons as a JSON-able list (JSON keys cannot be tuples): ``[{"a": A, "b": B,
    **result}, ...]``."""
    return [{"a": a, "b": b, **result} for (a, b), result in comparisons.items()]
