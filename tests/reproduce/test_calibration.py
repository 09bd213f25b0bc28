"""Calibration of the tables' significance marks: false-positive rates under true nulls.

Every check runs the function the tables call (:func:`reproduce.stats.compare_rows`, then
:func:`reproduce.stats.adjust_table` for the family) on data made like the harness's own:

- simulated cells: per-episode accuracies are binomial correct counts over ``n_way × 15``
  queries, 1000 episodes per seed, with an episode difficulty shared by both rows of a seed
  (they see the same episodes), an effect shared by the seed, and a per-model effect of sd
  ``σ`` (1–2 points), so two rows of the same method differ by ``√2·σ`` points per seed;
- real models: random-init Conv4 encoders of different seeds (a legitimate, cheap source of
  real seed-to-seed variance), evaluated by ``bmssl.evaluate.evaluate_fewshot`` on the same
  episodes of scikit-learn's digits and split into two pseudo-methods many ways.

A rate is accepted when it is at most ``0.05 + 2.6 · sqrt(0.05 · 0.95 / trials)`` (a one-sided
Monte-Carlo allowance of 2.6 standard errors). The old hierarchical bootstrap, run on the same
data, is asserted to exceed that bound at 3 seeds: the flaw these tests guard against.

The last section checks the power figures of :mod:`reproduce.power` (exact noncentral t) against
their definition, the normal formula at large ``S`` and Monte Carlo at small ``S``.
"""

import math

import numpy as np
import pytest
from scipy import stats as sps

from reproduce.power import mde_factor, min_detectable_effect, power_paired_t, seeds_needed
from reproduce.stats import (
    adjust_table,
    compare_rows,
    holm,
    paired_difference,
    paired_t_pvalues,
)

ALPHA = 0.05
N_WAY, N_QUERY, EPISODES = 5, 15, 1000


def bound(trials: int, rate: float = ALPHA) -> float:
    """The largest rate consistent with ``rate`` within 2.6 Monte-Carlo standard errors."""
    return rate + 2.6 * math.sqrt(rate * (1.0 - rate) / trials)


def simulate_rows(rng, seeds, sd_model, rows=2, shift=0.0, episodes=EPISODES):
    """Per-seed episode accuracies (%) of ``rows`` rows of one method, as the harness records
    them; the first row is ``shift`` points better. Returns ``[row][seed] -> array``."""
    queries = N_WAY * N_QUERY
    out = [[] for _ in range(rows)]
    for _ in range(seeds):
        # the seed's episodes (shared by every row) and what the seed shares across rows
        level = 60.0 + rng.normal(0.0, 10.0, episodes) + rng.normal(0.0, 2.0)
        for r in range(rows):
            model = rng.normal(0.0, sd_model) + (shift if r == 0 else 0.0)
            p = np.clip((level + model) / 100.0, 0.02, 0.98)
            out[r].append(100.0 * rng.binomial(queries, p) / queries)
    return out


def false_positive_rate(rng, seeds, sd_model, trials):
    marks = 0
    for _ in range(trials):
        a, b = simulate_rows(rng, seeds, sd_model)
        marks += compare_rows({"A": a, "B": b})["A", "B"]["sign"] != 0
    return marks / trials


@pytest.mark.parametrize("seeds, sd_model", [(3, 2.0), (5, 1.0), (10, 1.5)])
def test_seed_level_test_is_calibrated_on_simulated_nulls(seeds, sd_model):
    trials = 1000
    rate = false_positive_rate(np.random.default_rng(seeds), seeds, sd_model, trials)
    assert rate <= bound(trials), rate


def test_one_seed_never_marks():
    rng = np.random.default_rng(1)
    assert false_positive_rate(rng, 1, 2.0, 50) == 0.0


def test_old_bootstrap_is_not_calibrated_at_three_seeds():
    """The "before" figure: the same nulls through the old hierarchical bootstrap (the audit
    measured 16–25% at 3 seeds); it must exceed the bound the seed-level test meets."""
    rng = np.random.default_rng(30)
    trials, marks, t_marks = 200, 0, 0
    for k in range(trials):
        a, b = simulate_rows(rng, 3, 2.0)
        marks += paired_difference(a, b, n_boot=500, seed=k)["sign"] != 0
        t_marks += compare_rows({"A": a, "B": b})["A", "B"]["sign"] != 0
    assert marks / trials > bound(trials), marks / trials
    assert marks > t_marks


def test_power_at_five_seeds_for_an_effect_of_three_model_sds():
    """A true difference of 3σ (σ the per-model sd, so about 3/√2 = 2.1 sds of the per-seed
    difference) at 5 seeds: the exact noncentral-t power is 0.93 (λ = 4.7, df = 4), and the
    rate of ▲ must reach it within Monte-Carlo error. The power is real, not just the level."""
    rng = np.random.default_rng(50)
    sd_model, trials = 1.5, 500
    hits = 0
    for _ in range(trials):
        a, b = simulate_rows(rng, 5, sd_model, shift=3 * sd_model)
        hits += compare_rows({"A": a, "B": b})["A", "B"]["sign"] == 1
    # sd of d_s: two models (2σ²) plus the episode noise of two 1000-episode means (≈ 0.07)
    expected = power_paired_t(3 * sd_model, math.sqrt(2 * sd_model**2 + 0.07), 5)
    assert 0.9 < expected < 0.95
    assert hits / trials >= expected - 2.6 * math.sqrt(expected * (1 - expected) / trials)


# --- real models ----------------------------------------------------------------------------

N_MODELS, REAL_EPISODES = 24, 300


@pytest.fixture(scope="module")
def real_accuracies():
    """Per-episode 5-way 1-shot accuracies ``[model, episode]`` of ``N_MODELS`` random-init
    Conv4 encoders (width 16, seeds 0..23) on digits' test classes, every model on the same
    episodes, through the harness's evaluation (``evaluate_fewshot``, prototype classifier)."""
    import torch

    from bmssl.data import get_dataset
    from bmssl.evaluate import evaluate_fewshot
    from bmssl.methods import get_method
    from bmssl.pretrain import random_init_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        test = get_dataset("digits", None, split="test", image_size=28)
        out = []
        for seed in range(N_MODELS):
            config = get_method("random").load_config(
                None, {"dataset": "digits", "backbone": "conv4", "width": 16, "seed": seed}
            )
            backbone = random_init_encoder(config).backbone
            result = evaluate_fewshot(backbone, test, 5, 1, N_QUERY, REAL_EPISODES, "proto", seed=0)
            out.append(result.accuracies)
    finally:
        torch.set_num_threads(threads)
    return np.asarray(out)


def splits(rng, trials, seeds):
    """``trials`` random splits of the models into two pseudo-methods of ``seeds`` models each."""
    order = np.argsort(rng.random((trials, N_MODELS)), axis=1)
    return order[:, :seeds], order[:, seeds : 2 * seeds]


def test_real_models_have_real_seed_variance(real_accuracies):
    means = real_accuracies.mean(axis=1)
    episode_se = real_accuracies.std(axis=1).mean() / math.sqrt(REAL_EPISODES)
    assert means.std(ddof=1) > 4 * episode_se  # the seed, not the episodes, dominates


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_seed_level_test_is_calibrated_on_real_models(real_accuracies, seeds):
    trials = 1000
    first, second = splits(np.random.default_rng(seeds), trials, seeds)
    marks = 0
    for a, b in zip(first, second):
        cells = {"A": list(real_accuracies[a]), "B": list(real_accuracies[b])}
        marks += compare_rows(cells)["A", "B"]["sign"] != 0
    assert marks / trials <= bound(trials), marks / trials


def test_old_bootstrap_on_real_models_at_three_seeds(real_accuracies):
    trials = 200
    first, second = splits(np.random.default_rng(33), trials, 3)
    marks = sum(
        paired_difference(list(real_accuracies[a]), list(real_accuracies[b]), 500, k)["sign"] != 0
        for k, (a, b) in enumerate(zip(first, second))
    )
    assert marks / trials > bound(trials), marks / trials


# --- the family-wise error rate of Holm's adjustment ----------------------------------------


def test_holm_controls_the_familywise_rate_of_30_independent_nulls():
    """30 independent null comparisons at 3 seeds: without adjustment at least one false mark
    appears in about 1 − 0.95³⁰ ≈ 79% of tables; with Holm in at most 5% (within MC error)."""
    rng = np.random.default_rng(60)
    trials, family = 4000, 30
    p = paired_t_pvalues(
        rng.normal(0.0, rng.uniform(1.0, 3.0, (trials, family, 1)), (trials, family, 3))
    )
    any_raw = np.mean((p < ALPHA).any(axis=1))
    any_holm = np.mean([min(holm(row.tolist())) < ALPHA for row in p])
    assert any_raw > 0.7
    assert any_holm <= bound(trials), any_holm


def test_holm_controls_the_familywise_rate_of_a_whole_table():
    """A table of 6 identical methods × 2 columns at 3 seeds (15 pairs per column, 30
    comparisons), through compare_rows and adjust_table: the rate of tables with any mark."""
    rng = np.random.default_rng(61)
    trials, rows = 400, ["A", "B", "C", "D", "E", "F"]
    with_marks = 0
    for _ in range(trials):
        table = {}
        for column in ("c1", "c2"):
            per_row = simulate_rows(rng, 3, 1.5, rows=len(rows), episodes=100)
            table[column] = compare_rows(dict(zip(rows, per_row)))
        adjusted = adjust_table(table)
        assert {r["family_size"] for c in adjusted.values() for r in c.values()} == {30}
        with_marks += any(r["sign"] != 0 for c in adjusted.values() for r in c.values())
    assert with_marks / trials <= bound(trials), with_marks / trials


# --- power (exact noncentral t) ------------------------------------------------------------


def test_power_is_alpha_at_zero_effect_and_rises_with_effect_and_seeds():
    assert power_paired_t(0.0, 1.0, 5) == pytest.approx(0.05)
    powers = [power_paired_t(e, 1.0, 5) for e in (0.5, 1.0, 2.0, 3.0)]
    assert powers == sorted(powers) and powers[-1] > 0.99
    assert power_paired_t(1.0, 1.0, 10) > power_paired_t(1.0, 1.0, 5)
    assert power_paired_t(-1.0, 1.0, 5) == power_paired_t(1.0, 1.0, 5)
    with pytest.raises(ValueError):
        power_paired_t(1.0, 1.0, 1)


@pytest.mark.parametrize("seeds", [2, 3, 5, 10, 40])
def test_mde_has_exactly_80_percent_power(seeds):
    mde = min_detectable_effect(1.7, seeds)
    assert power_paired_t(mde, 1.7, seeds) == pytest.approx(0.8, abs=1e-8)
    assert mde == pytest.approx(1.7 * mde_factor(seeds))


def test_mde_and_seeds_needed_approach_the_normal_formula_at_large_s():
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    for seeds in (500, 1000):
        assert min_detectable_effect(2.0, seeds) == pytest.approx(
            z * 2.0 / math.sqrt(seeds), rel=2e-3
        )
    # n ≈ (z σ / δ)²; the t-test needs a seed or two more (Guenther's + z²_{α/2}/2 correction)
    for effect, sd in ((0.1, 1.0), (0.25, 1.5), (0.2, 1.0)):
        approx = (z * sd / effect) ** 2
        needed = seeds_needed(effect, sd)
        assert approx <= needed <= approx + sps.norm.ppf(0.975) ** 2 / 2 + 1.5


def test_seeds_needed_is_the_smallest_sufficient_count():
    for effect, sd in ((1.0, 1.5), (2.0, 1.5), (1.0, 3.0), (2.0, 0.5), (5.0, 1.0)):
        s = seeds_needed(effect, sd)
        assert s >= 2 and power_paired_t(effect, sd, s) >= 0.8
        if s > 2:
            assert power_paired_t(effect, sd, s - 1) < 0.8
    assert seeds_needed(0.01, 1.0) is None  # beyond 1000 seeds
    assert seeds_needed(1.0, None) is None and seeds_needed(1.0, 0.0) is None
    assert seeds_needed(0.0, 1.0) is None
    assert min_detectable_effect(1.0, 1) is None and min_detectable_effect(None, 3) is None


@pytest.mark.parametrize("seeds", [3, 5])
def test_power_at_the_mde_by_monte_carlo(seeds):
    trials = 20_000
    rng = np.random.default_rng(13 + seeds)
    mde = min_detectable_effect(1.0, seeds)
    p = paired_t_pvalues(rng.normal(mde, 1.0, size=(trials, seeds)))
    rate = float(np.mean(p < 0.05))
    assert rate == pytest.approx(0.8, abs=4 * math.sqrt(0.8 * 0.2 / trials))
