"""Power of the seed-level paired t-test: minimum detectable effect and seeds needed.

The test (:func:`reproduce.inference.seed_paired_t`) compares two rows through the per-seed
mean differences ``d_1..d_S``. If the ``d_s`` are independent ``N(δ, σ²)`` (``σ`` the sd of the
per-seed difference, which carries the training noise of both models and a little episode
noise), the statistic ``T = mean(d) / (sd(d) / sqrt(S))`` follows the noncentral t distribution
with ``S − 1`` degrees of freedom and noncentrality ``λ = δ · sqrt(S) / σ``. The two-sided test
at level ``α`` rejects when ``|T| > c``, ``c = t_{S−1, 1−α/2}``, so its power is exactly

    power(δ; S, σ, α) = P(T' > c) + P(T' < −c),   T' ~ nct(df = S − 1, nc = λ).

The power is increasing in ``|δ|`` (for fixed ``S``) and in ``S`` (for fixed ``δ``), which is what
makes the two inversions below well defined:

- the *minimum detectable effect* ``MDE(S, σ) = λ*(S) · σ / sqrt(S)`` where ``λ*(S)`` solves
  ``power = target`` (80% by default) for the noncentrality;
- the *seeds needed* for an effect ``δ``: the smallest ``S ≥ 2`` whose MDE is at most ``|δ|``.

``σ`` is in practice the sd observed across a table's own seeds: with 3 seeds it is itself a
rough estimate (from an observed sd ``s`` at 3 seeds, the 95% interval of σ is about 0.52·s to
6.3·s), so these are planning figures that say how large an effect the table *could* have seen,
never evidence about the effect itself.

Large ``S`` limit (used in the tests): ``MDE ≈ (z_{1−α/2} + z_{power}) · σ / sqrt(S)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

from scipy import optimize
from scipy import stats as sps

#: power the MDE and the seed counts are computed for
TARGET_POWER = 0.8
#: the largest seed count :func:`seeds_needed` looks at; beyond it the answer is ``None``
MAX_SEEDS = 1000


def power_from_noncentrality(noncentrality: float, seeds: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t-test with ``seeds`` seeds at noncentrality
    ``λ = δ · sqrt(S) / σ``: ``P(|T'| > t_{S−1, 1−α/2})`` with ``T' ~ nct(S − 1, λ)``."""
    if seeds < 2:
        raise ValueError(f"the paired t-test needs at least 2 seeds, got {seeds}")
    df = seeds - 1
    crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    lam = abs(float(noncentrality))
    if lam == 0.0:
        return alpha
    upper = float(sps.nct.sf(crit, df, lam))
    # P(T' < −c) needs Z + λ < 0 (T' = (Z + λ) / sqrt(V / df)), so it is at most Φ(−λ): that
    # bound replaces the NaN scipy's nct gives for some far tails (df = 1, λ ≈ 8) and its noise.
    lower = float(sps.nct.sf(crit, df, -lam))
    bound = float(sps.norm.cdf(-lam))
    lower = min(lower, bound) if math.isfinite(lower) else bound
    if not math.isfinite(upper):
        raise ValueError(f"noncentral t power undefined at {seeds} seeds, λ = {lam}")
    return upper + lower


def power_paired_t(effect: float, sd: float, seeds: int, alpha: float = 0.05) -> float:
    """Exact power to detect a true mean difference ``effect`` (points) with ``seeds`` seeds when
    the per-seed differences have sd ``sd``: :func:`power_from_noncentrality` at
    ``λ = effect · sqrt(S) / sd``."""
    if not sd > 0:
        raise ValueError(f"sd must be positive, got {sd}")
    return power_from_noncentrality(effect * math.sqrt(seeds) / sd, seeds, alpha)


@lru_cache(maxsize=8192)
def _noncentrality_for_power(seeds: int, alpha: float, power: float) -> float:
    """``λ*`` with ``power_from_noncentrality(λ*, seeds, alpha) = power`` (Brent's method)."""

    def gap(lam: float) -> float:
        return power_from_noncentrality(lam, seeds, alpha) - power

    high = 8.0
    while gap(high) < 0.0:  # df = 1 at α = 0.05 needs λ ≈ 16 for 80%; double until bracketed
        high *= 2.0
        if high > 1e6:
            raise ValueError(f"power {power} is out of reach at {seeds} seeds, alpha {alpha}")
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-10, rtol=1e-12))


def mde_factor(seeds: int, alpha: float = 0.05, power: float = TARGET_POWER) -> float:
    """``MDE / σ`` at ``seeds`` seeds: ``λ*(S) / sqrt(S)`` (cached; depends on S, α, power only)."""
    if not 0.0 < alpha < 1.0 or not alpha < power < 1.0:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    return _noncentrality_for_power(int(seeds), float(alpha), float(power)) / math.sqrt(seeds)


def min_detectable_effect(
    sd: float | None, seeds: int, alpha: float = 0.05, power: float = TARGET_POWER
) -> float | None:
    """Smallest true difference (points) the two-sided paired t-test at level ``alpha`` detects
    with probability ``power`` from ``seeds`` seeds whose differences have sd ``sd``:
    ``MDE = λ* · sd / sqrt(S)`` with ``λ*`` solved exactly on the noncentral t.

    ``None`` where undefined: fewer than 2 seeds, or ``sd`` missing, not finite or not positive
    (the test itself is then untestable).
    """
    if seeds < 2 or sd is None or not math.isfinite(sd) or sd <= 0.0:
        return None
    return mde_factor(seeds, alpha, power) * float(sd)


def seeds_needed(
    effect: float,
    sd: float | None,
    alpha: float = 0.05,
    power: float = TARGET_POWER,
    max_seeds: int = MAX_SEEDS,
) -> int | None:
    """Smallest ``S ≥ 2`` at which the paired t-test detects a true difference ``|effect|``
    (points) with probability at least ``power``, given per-seed differences of sd ``sd``.

    Since the MDE decreases in ``S`` this is the smallest ``S`` with
    ``mde_factor(S) · sd ≤ |effect|``, found by bisection on the (cached) exact factors. ``None``
    when more than ``max_seeds`` would be needed, or when ``effect`` is 0 or ``sd`` is missing,
    not finite or not positive.
    """
    if sd is None or not math.isfinite(sd) or sd <= 0.0 or effect == 0 or not math.isfinite(effect):
        return None
    ratio = abs(float(effect)) / float(sd)

    def enough(s: int) -> bool:
        return mde_factor(s, alpha, power) <= ratio

    if not enough(max_seeds):
        return None
    lo, hi = 1, max_seeds  # invariant: not enough(lo) (S = 1 cannot test), enough(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
