"""tuning.records (best trial, arms across seeds) and tuning.report (Markdown, CSV, plot)."""

from __future__ import annotations

import csv

import pytest

from bmssl.config import load_config
from tests.tuning.helpers import ToyConfig, register_toy
from tuning.plan import SearchRequest, make_plan
from tuning.records import TrialRecord, best_arm, best_record, group_arms, history_rows
from tuning.report import write_report


def _record(tid, aug, acc, step, status="TERMINATED", history=None, error=None, seed=7):
    last = {} if acc is None else {"val_acc": acc, "val_ci95": 2.0, "step": float(step)}
    return TrialRecord(tid, status, {"augment": aug}, seed, last, history or [], error)


def test_best_prefers_trials_trained_for_the_full_budget():
    stopped_early = _record("a", "none", 90.0, 2)
    full = _record("b", "weak", 60.0, 6)
    better_full = _record("c", "strong", 61.0, 6)
    never_started = _record("d", "default", None, 0, status="PENDING")
    assert best_record([stopped_early, full, better_full, never_started]) is better_full
    assert best_record([never_started]) is None


def test_best_is_the_best_seed_of_the_arm_with_the_best_mean():
    records = [
        _record("a0", "weak", 70.0, 6, seed=0),  # the single best trial, in a poor arm
        _record("a1", "weak", 40.0, 6, seed=1),
        _record("b0", "strong", 60.0, 6, seed=0),
        _record("b1", "strong", 62.0, 6, seed=1),
        _record("c0", "none", 90.0, 3, seed=0),  # stopped early: not in its arm's statistics
        _record("c1", "none", 50.0, 6, seed=1),
    ]
    arms = {a.params["augment"]: a for a in group_arms(records)}
    assert (arms["weak"].n, arms["weak"].mean) == (2, 55.0)
    assert arms["strong"].sd == pytest.approx(2**0.5)
    # 95% t-interval of a 2-seed mean: t(0.975, 1) = 12.706 times s.d./sqrt(2)
    assert arms["strong"].ci95 == pytest.approx(12.7062 * 1.0, rel=1e-4)
    assert (arms["none"].n, len(arms["none"].trials), arms["none"].sd) == (1, 2, None)
    assert best_arm(records).params == {"augment": "strong"}
    assert best_record(records).trial_id == "b1"


def test_history_keeps_the_latest_report_of_each_step():
    text = "\n".join(
        [
            '{"step": 1, "bissl_val_acc": 40.0, "time_this_iter_s": 3.0}',
            '{"step": 2, "bissl_val_acc": 42.0}',
            '{"step": 2, "bissl_val_acc": 42.0, "val_acc": 77.0, "test_top1": 1.0}',
            '{"step": 3, "val_ac',  # what a killed writer leaves
        ]
    )
    rows = history_rows(text)
    assert rows == [
        {"step": 1.0, "bissl_val_acc": 40.0},
        {"step": 2.0, "bissl_val_acc": 42.0, "val_acc": 77.0, "test_top1": 1.0},
    ]
    assert history_rows(None) == []


def test_report_files(tmp_path):
    register_toy()
    plan = make_plan(SearchRequest("toy", "augment-strength"))
    history = [{"step": 3.0, "val_acc": 40.0}, {"step": 6.0, "val_acc": 45.0}]
    records = [
        _record("t0", "none", 45.0, 6, history=history),
        _record("t1", "weak", 50.0, 6),
        _record("t2", "strong", 55.0, 3),
        _record("t3", "default", None, 0, status="ERROR", error="ValueError: boom"),
        _record("t4", "default", None, 0, status="PENDING"),
    ]
    best = best_record(records)
    paths = write_report(
        records, plan.to_json(), plan.axes, tmp_path / "report", plan.best_config_yaml(best)
    )
    rows = list(csv.DictReader(paths.trials_csv.open()))
    assert [r["trial_id"] for r in rows] == ["t0", "t1", "t2", "t3", "t4"]
    assert [r["best"] for r in rows] == ["0", "1", "0", "0", "0"]
    assert rows[3]["error"] == "ValueError: boom" and rows[4]["val_acc"] == ""
    hist = list(csv.DictReader(paths.history_csv.open()))
    assert [(h["trial_id"], h["step"], h["val_acc"]) for h in hist] == [
        ("t0", "3", "40"),
        ("t0", "6", "45"),
    ]
    md = paths.summary_md.read_text()
    assert "`t1` ★" in md and "| weak |" in md and "accuracy_vs_params.png" in md
    assert "## Arms" not in md  # one trial per arm: nothing to aggregate
    assert paths.plot_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_config(ToyConfig, paths.best_yaml)
    assert loaded == ToyConfig(augment="weak", seed=7)


def test_report_gives_each_arm_its_mean_and_spread_across_seeds(tmp_path):
    register_toy()
    plan = make_plan(SearchRequest("toy", "augment-strength"))
    records = [
        _record(f"{aug}{seed}", aug, 50.0 + 10 * i + seed, 6, seed=seed)
        for i, aug in enumerate(("none", "weak", "strong"))
        for seed in (0, 1)
    ]
    paths = write_report(records, plan.to_json(), plan.axes, tmp_path, None)
    md = paths.summary_md.read_text()
    assert "## Arms" in md and "seeds: 0, 1" in md
    # strong: 70 and 71 -> mean 70.50, s.d. 0.71, t-interval ± 6.35
    assert "| strong | 2 | 70.50 ★ | 0.71 | ± 6.35 | 70.00 | 71.00 |" in md
    assert "Its arm (the best mean across seeds): 70.50 ± 0.71 (s.d., 2 seeds)" in md
    assert paths.best_yaml is None and paths.plot_png.stat().st_size > 5000
