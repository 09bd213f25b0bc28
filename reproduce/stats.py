"""Statistics of the results tables: intervals across seeds, episode intervals, comparisons.

Data layout: a *cell* (one method on one benchmark column) is a sequence over seeds ``s = 1..S``
of per-episode accuracies ``x_s`` (1-D arrays in %, ``E`` episodes each), where seed ``s``
retrained the method from scratch. Within one seed every method was evaluated on the identical
episodes, so episode ``i`` of method A and episode ``i`` of method B are a pair.

Two sources of noise are in such a cell: the *training* noise (another seed gives another model)
and the *episode* noise (another episode set gives another score for the same model). The
interval across seeds covers both; the episode interval covers only the second, which is why it
is reported beside the primary figure and never in its place.

Comparisons between rows (which decide the table's marks) are the seed-level paired t-test of
:mod:`reproduce.inference` and Holm's adjustment of :mod:`reproduce.multiplicity`, re-exported
here (:func:`compare_rows`, :func:`adjust_table`, :func:`beats_all`, :func:`comparisons_json`,
...); their power figures are in :mod:`reproduce.power`. The hierarchical bootstrap below
(:func:`paired_difference`, also named :func:`hierarchical_bootstrap_difference`) produced the
intervals of tables made before; its "95%" interval rejects a true null 16–25% of the time at 3
seeds (``benchmarks/calibration.py``), so it is kept for reading old JSON and decides nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from bmssl.evaluate import mean_ci95
from reproduce.inference import (  # noqa: F401  (re-exported: the tables import them from here)
    ALPHA,
    beats_all,
    compare_rows,
    comparisons_json,
    paired_episode_differences,
    paired_t_pvalues,
    paired_t_test,
    pooled_paired_t,
    seed_differences,
    seed_paired_t,
)
from reproduce.multiplicity import adjust_results, adjust_table, holm, table_family  # noqa: F401
from reproduce.power import (  # noqa: F401
    min_detectable_effect,
    power_paired_t,
    seeds_needed,
)

# The bootstrap gathers ``draws × seeds × episodes`` values; beyond this many per chunk the
# replicates are drawn in chunks so that memory stays bounded (~64 MB of float64 + indices).
_CHUNK_ELEMENTS = 4_000_000


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean.

    For ``n`` values with mean ``m`` and sample standard deviation ``s`` (``ddof=1``)::

        half = t_{n-1, (1+confidence)/2} · s / sqrt(n)

    The interval is ``m ± half``. With one value the spread is unknown and ``half`` is ``nan``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan
    quantile = float(sps.t.ppf((1.0 + confidence) / 2.0, df=x.size - 1))
    return mean, quantile * float(x.std(ddof=1)) / math.sqrt(x.size)


def episode_interval(accuracies: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and ``1.96 · σ / sqrt(n)`` of per-episode accuracies (``σ`` the population std).

    The customary few-shot interval (as :func:`bmssl.evaluate.mean_ci95`): it treats the model
    as fixed and measures only the episode sampling noise.
    """
    acc = np.asarray(accuracies, dtype=np.float64).ravel()
    if acc.size == 0:
        raise ValueError("episode_interval needs at least one episode")
    return mean_ci95(acc)


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; ``None`` (null) says "undefined" in a way every reader understands.
    return float(value) if math.isfinite(value) else None


def summarise_cell(per_seed: Sequence[np.ndarray]) -> dict[str, Any]:
    """Summary of one cell from its per-seed episode accuracies ``x_1..x_S``.

    - ``seed_means``: ``m_s = mean(x_s)``, one per seed;
    - ``mean``: ``mean_s m_s`` (each seed weighs the same, whatever its episode count);
    - ``half_width``: the 95% Student-t half-width across the ``m_s`` (:func:`t_interval`), the
      primary interval ``mean ± half_width``; ``None`` with one seed;
    - ``std``: sample std of the ``m_s`` (``None`` with one seed);
    - ``episode_mean``, ``episode_half_width``: :func:`episode_interval` of all episodes of all seeds
      pooled (episode noise only, reported beside the primary figure);
    - ``seeds``: ``S``; ``episodes``: the episode count of each seed.

    Every value is a plain float, int, list or ``None``, so the dict is JSON-able as is.
    """
    arrays = [np.asarray(x, dtype=np.float64).ravel() for x in per_seed]
    if not arrays or any(x.size == 0 for x in arrays):
        raise ValueError("summarise_cell needs at least one seed with at least one episode")
    seed_means = [float(x.mean()) for x in arrays]
    mean, half = t_interval(seed_means)
    episode_mean, episode_half = episode_interval(np.concatenate(arrays))
    return {
        "mean": mean,
        "half_width": _finite_or_none(half),
        "std": _finite_or_none(float(np.std(seed_means, ddof=1))) if len(arrays) > 1 else None,
        "seed_means": seed_means,
        "seeds": len(arrays),
        "episodes": [int(x.size) for x in arrays],
        "episode_mean": episode_mean,
        "episode_half_width": episode_half,
    }


def _paired_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """``D[s, i] = a_s[i] − b_s[i]`` as a ``seeds × episodes`` array, after checking the pairing."""
    rows = paired_episode_differences(a, b)
    if len({r.size for r in rows}) != 1:
        raise ValueError(
            "every seed must have the same episode count, got " + str([r.size for r in rows])
        )
    return np.stack(rows)


def bootstrap_means(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """``n_boot`` hierarchical-bootstrap replicates of the mean of ``diffs`` (``seeds × episodes``).

    Replicate ``b``: draw ``S`` seeds ``s*_1..s*_S`` with replacement; for each draw ``j`` draw
    ``E`` episodes ``i*_{j,1..E}`` of seed ``s*_j`` with replacement; the statistic is

        T_b = (1/S) Σ_j (1/E) Σ_e D[s*_j, i*_{j,e}].

    Random draws, in this order from ``numpy.random.default_rng(seed)``: all seed indices
    (``integers(0, S, size=(n_boot, S))``), then the episode indices of replicate 0, 1, ...
    (each ``integers(0, E, size=(S, E))``); replicates are gathered in chunks, which draws the
    same stream.
    """
    n_seeds, n_episodes = diffs.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    chunk = max(1, _CHUNK_ELEMENTS // (n_seeds * n_episodes))
    flat = np.ascontiguousarray(diffs).ravel()
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        episodes = rng.integers(0, n_episodes, size=(stop - start, n_seeds, n_episodes))
        # D[s*_j, i*_{j,e}] for all replicates of the chunk at once, (chunk, S, E), through flat
        # indices: np.take on a raveled array is several times faster than 2-D fancy indexing.
        episodes += seed_draws[start:stop, :, None] * n_episodes
        out[start:stop] = np.take(flat, episodes).mean(axis=(1, 2))
    return out


def paired_difference(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean paired difference ``a − b`` over seeds × shared episodes, with a bootstrap interval.

    The test the tables used before :mod:`reproduce.inference`; kept for old JSON, it decides
    no mark. Resampling 3 seeds draws their mean from 3 values, so the "95%" interval is about
    the range of the seed differences and excludes zero under a true null 16–25% of the time at
    3 seeds (14–15% at 5; ``benchmarks/calibration.py``).

    ``a[s]`` and ``b[s]`` are the per-episode accuracies of two rows under seed ``s`` on the
    same episodes, so ``D[s, i] = a[s][i] − b[s][i]``. The point estimate is
    ``mean_s mean_i D[s, i]``; the interval is the percentile interval
    ``[q_{(1−c)/2}, q_{(1+c)/2}]`` of the hierarchical bootstrap replicates of
    :func:`bootstrap_means` (seeds resampled, then episodes within each resampled seed), so it
    carries both the training noise between seeds and the episode noise within one.

    Returns ``mean``, ``lo``, ``hi`` (points of accuracy), ``seeds``, ``episodes`` (per seed),
    ``seed_means`` (``mean_i D[s, i]`` per seed), ``excludes_zero`` and ``sign``: ``+1`` if
    ``lo > 0`` (a significantly better), ``-1`` if ``hi < 0`` (worse), else ``0``.
    Raises ``ValueError`` if the seed or episode counts do not pair up.
    """
    diffs = _paired_matrix(a, b)
    replicates = bootstrap_means(diffs, n_boot=n_boot, seed=seed)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = (float(q) for q in np.percentile(replicates, [tail, 100.0 - tail]))
    sign = 1 if lo > 0 else -1 if hi < 0 else 0
    return {
        "mean": float(diffs.mean()),
        "lo": lo,
        "hi": hi,
        "seeds": int(diffs.shape[0]),
        "episodes": int(diffs.shape[1]),
        "seed_means": [float(m) for m in diffs.mean(axis=1)],
        "excludes_zero": sign != 0,
        "sign": sign,
    }


#: the old name and a clearer one for the hierarchical bootstrap of :func:`paired_difference`
hierarchical_bootstrap_difference = paired_difference
