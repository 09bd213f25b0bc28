import math

import numpy as np
import pytest
from scipy import stats as sps

from reproduce.stats import (
    beats_all,
    compare_rows,
    comparisons_json,
    episode_interval,
    paired_difference,
    summarise_cell,
    t_interval,
)


def brute_force_bootstrap(a, b, n_boot, seed):
    """The hierarchical bootstrap written as plain loops, drawing the documented stream."""
    rng = np.random.default_rng(seed)
    n_seeds, n_episodes = len(a), len(a[0])
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    out = []
    for r in range(n_boot):
        per_seed = []
        for j in range(n_seeds):
            s = seed_draws[r, j]
            idx = rng.integers(0, n_episodes, size=n_episodes)
            per_seed.append(sum(a[s][i] - b[s][i] for i in idx) / n_episodes)
        out.append(sum(per_seed) / n_seeds)
    return out


def seeds_of(rng, shift, n_seeds=3, episodes=100, seed_sd=1.0, episode_sd=10.0):
    """Per-seed episode accuracies of two rows on shared episodes; ``a`` is ``shift`` above ``b``."""
    a, b = [], []
    for _ in range(n_seeds):
        difficulty = rng.normal(60, episode_sd, episodes)  # shared episodes: paired
        a.append(difficulty + shift + rng.normal(0, seed_sd) + rng.normal(0, 3, episodes))
        b.append(difficulty + rng.normal(0, seed_sd) + rng.normal(0, 3, episodes))
    return a, b


def test_t_interval_matches_scipy():
    values = [71.2, 73.9, 70.4, 72.8]
    mean, half = t_interval(values)
    lo, hi = sps.t.interval(0.95, df=3, loc=np.mean(values), scale=sps.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx((hi - lo) / 2)
    assert t_interval(values, confidence=0.99)[1] > half


def test_t_interval_of_one_value_has_no_width():
    mean, half = t_interval([80.0])
    assert mean == 80.0 and math.isnan(half)
    with pytest.raises(ValueError):
        t_interval([])


def test_episode_interval_uses_population_std():
    acc = np.array([60.0, 80.0, 100.0, 40.0])
    assert episode_interval(acc) == pytest.approx((70.0, 1.96 * acc.std() / 2))


def test_summarise_cell_is_json_able_and_per_seed():
    rng = np.random.default_rng(0)
    per_seed = [rng.normal(m, 5, 50) for m in (70, 72, 74)]
    cell = summarise_cell(per_seed)
    assert cell["seeds"] == 3 and cell["episodes"] == [50, 50, 50]
    assert cell["seed_means"] == pytest.approx([x.mean() for x in per_seed])
    assert cell["mean"] == pytest.approx(np.mean(cell["seed_means"]))
    assert cell["half_width"] == pytest.approx(t_interval(cell["seed_means"])[1])
    assert cell["episode_half_width"] == pytest.approx(
        episode_interval(np.concatenate(per_seed))[1]
    )
    assert all(type(v) in (float, int, list) for v in cell.values())

    one = summarise_cell(per_seed[:1])
    assert one["half_width"] is None and one["std"] is None and one["seeds"] == 1
    with pytest.raises(ValueError):
        summarise_cell([])


def test_bootstrap_matches_brute_force_loop():
    rng = np.random.default_rng(3)
    a, b = seeds_of(rng, shift=1.0, n_seeds=3, episodes=7)
    result = paired_difference(a, b, n_boot=200, seed=11)
    replicates = brute_force_bootstrap(a, b, n_boot=200, seed=11)
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    assert result["lo"] == pytest.approx(lo) and result["hi"] == pytest.approx(hi)
    assert result["mean"] == pytest.approx(np.mean([x - y for x, y in zip(a, b)]))
    assert result["seeds"] == 3 and result["episodes"] == 7
    assert paired_difference(a, b, n_boot=200, seed=11) == result  # same seed, same numbers


def test_bootstrap_chunks_draw_the_same_stream(monkeypatch):
    import reproduce.stats as stats

    rng = np.random.default_rng(4)
    a, b = seeds_of(rng, shift=0.0, n_seeds=2, episodes=30)
    whole = paired_difference(a, b, n_boot=100, seed=2)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 70)  # one replicate per chunk
    assert paired_difference(a, b, n_boot=100, seed=2) == whole


def test_zero_difference_interval_usually_contains_zero():
    rng = np.random.default_rng(5)
    contains = 0
    for _ in range(50):
        a, b = seeds_of(rng, shift=0.0)
        result = paired_difference(a, b, n_boot=500, seed=int(rng.integers(1 << 30)))
        contains += result["lo"] <= 0 <= result["hi"]
        assert result["excludes_zero"] == (result["sign"] != 0)
    # Nominal 95%; with 3 seeds the percentile bootstrap is somewhat narrow, so allow slack.
    assert contains >= 38


def test_real_shift_excludes_zero():
    rng = np.random.default_rng(6)
    a, b = seeds_of(rng, shift=5.0)
    result = paired_difference(a, b)
    assert result["excludes_zero"] and result["sign"] == 1 and result["lo"] > 0
    assert result["mean"] == pytest.approx(5.0, abs=2.0)
    reverse = paired_difference(b, a)
    assert reverse["sign"] == -1 and reverse["hi"] < 0


def test_one_seed_resamples_episodes_only():
    rng = np.random.default_rng(7)
    a, b = seeds_of(rng, shift=2.0, n_seeds=1, episodes=500)
    result = paired_difference(a, b)
    assert result["seeds"] == 1 and result["lo"] < result["mean"] < result["hi"]


def test_pairing_errors():
    a = [np.zeros(10), np.zeros(10)]
    with pytest.raises(ValueError, match="episodes"):
        paired_difference(a, [np.zeros(10), np.zeros(9)])
    with pytest.raises(ValueError, match="seeds"):
        paired_difference(a, a[:1])
    with pytest.raises(ValueError, match="same episode count"):
        paired_difference([np.zeros(10), np.zeros(8)], [np.zeros(10), np.zeros(8)])
    with pytest.raises(ValueError):
        paired_difference([], [])


def test_compare_rows_every_ordered_pair_and_mirror():
    rng = np.random.default_rng(8)
    base = [rng.normal(60, 10, 80) for _ in range(3)]
    cells = {
        "best": [x + 8 + rng.normal(0, 1, 80) for x in base],
        "mid": [x + 4 + rng.normal(0, 1, 80) for x in base],
        "low": [x + rng.normal(0, 1, 80) for x in base],
    }
    comparisons = compare_rows(cells, n_boot=300)
    assert len(comparisons) == 6
    for (a, b), result in comparisons.items():
        mirror = comparisons[b, a]
        assert mirror["mean"] == pytest.approx(-result["mean"])
        assert (mirror["lo"], mirror["hi"]) == pytest.approx((-result["hi"], -result["lo"]))
        assert mirror["sign"] == -result["sign"]
    assert beats_all(comparisons, "best")
    assert not beats_all(comparisons, "mid") and not beats_all(comparisons, "low")
    records = comparisons_json(comparisons)
    assert {(r["a"], r["b"]) for r in records} == set(comparisons)
