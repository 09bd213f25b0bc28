"""tuning/: spaces, CLI errors, the report, and real Ray Tune searches over the real trainers.

The Ray tests start a local Ray (2 CPUs, no dashboard, RAY_TMPDIR in a temp dir) and run tiny
configs: a few steps of width-4/8 networks, a handful of validation episodes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from bmssl.baselines import SimCLRConfig
from bmssl.config import load_config
from bmssl.errors import UserError
from tuning import spaces as sp
from tuning.__main__ import main
from tuning.export import TrialRecord, best_record, load_records, write_report
from tuning.methods import TARGETS, get_target
from tuning.search import SearchRequest, make_plan, run_search
from tuning.trainables import tune_metrics

REPO = Path(__file__).resolve().parents[2]

#: BMSSL small enough that a trial is a few seconds on one thread
TINY_BMSSL = {
    "dataset": "digits",
    "width": 4,
    "proj_hidden": 8,
    "proj_dim": 8,
    "n_way": 3,
    "k_support": 2,
    "q_query": 1,
    "meta_batch": 1,
    "steps": 2,
    "eval_every": 1,
    "eval_episodes": 10,
}
TINY_BISSL = {
    "width": 4,
    "proj_hidden": 8,
    "proj_dim": 8,
    "pretext_steps": 2,
    "pretext_batch_size": 16,
    "head_warmup_steps": 2,
    "alternations": 2,
    "lower_steps": 1,
    "upper_steps": 1,
    "batch_size": 16,
    "lower_batch_size": 16,
    "finetune_steps": 2,
    "finetune_batch_size": 16,
    "eval_every": 1,
    "cg_iters": 2,
}


# -- spaces ---------------------------------------------------------------------------------


def _base(target: str, **overrides):
    return get_target(target).base_config(None, overrides)


def test_bissl_lambda_gamma_ranges():
    from ray.tune.search.sample import Float

    axes = {a.name: a for a in sp.get_space("bissl-lambda-gamma").axes(_base("bissl"))}
    lam = axes["lam"].distribution
    assert isinstance(lam, Float) and (lam.lower, lam.upper) == (1e-4, 1e-1)
    assert isinstance(lam.get_sampler(), Float._LogUniform)
    assert set(axes["gamma"].grid) == {0.01, 0.1, 1.0}
    assert set(axes["gamma"].distribution.categories) == {0.01, 0.1, 1.0}
    assert axes["lam"].grid[0] == 1e-4 and axes["lam"].grid[-1] == 1e-1


def test_bmssl_delta_is_multiples_of_inner_steps():
    (axis,) = sp.get_space("bmssl-delta").axes(_base("bmssl", inner_steps=3))
    assert axis.name == "bootstrap_steps"
    assert axis.grid == (0, 3, 6, 15, 30)
    assert sp.get_space("bmssl-delta").default_search == "grid"


def test_finetune_space_bounds_and_target():
    space = sp.get_space("finetune-lr-wd")
    assert space.target_for("bissl") == "bissl-finetune"
    axes = {a.name: a for a in space.axes(_base("bissl"))}
    assert (axes["finetune_lr"].distribution.lower, axes["finetune_lr"].distribution.upper) == (
        1e-4,
        1.0,
    )
    assert (axes["finetune_wd"].distribution.lower, axes["finetune_wd"].distribution.upper) == (
        1e-5,
        1e-2,
    )


def test_ablation_spaces():
    from bmssl.data.views import STRENGTHS

    base = _base("bmssl", dataset="digits", n_way=2, steps=80)
    (aug,) = sp.get_space("augment-strength").axes(base)
    assert aug.grid == tuple(STRENGTHS)
    (images,) = sp.get_space("scaling-images").axes(base)
    assert images.grid[-1] is None and list(images.grid[:-1]) == sorted(images.grid[:-1])
    (steps,) = sp.get_space("scaling-tasks").axes(base)
    assert steps.grid == (10, 20, 40, 80)
    assert sp.get_space("scaling-tasks").default_scheduler == "fifo"
    assert sp.get_space("bissl-lambda-gamma").default_scheduler == "asha"


@pytest.mark.parametrize("name", sorted(sp.SPACES))
def test_every_axis_is_a_real_config_field(name):
    space = sp.SPACES[name]
    for target_name in space.targets.values():
        target = TARGETS[target_name]
        base = target.base_config(None, {"dataset": "digits"} if name == "scaling-images" else {})
        fields = set(target.fields())
        assert {a.name for a in space.axes(base)} <= fields


def test_param_space_grid_random_and_seeds():
    from ray.tune.search.sample import Categorical, Integer

    axes = sp.get_space("bissl-lambda-gamma").axes(_base("bissl"))
    grid = sp.param_space(axes, "grid", seeds=[0, 1])
    assert grid["lam"] == {"grid_search": [1e-4, 1e-3, 1e-2, 1e-1]}
    assert grid["seed"] == {"grid_search": [0, 1]}
    rand = sp.param_space(axes, "random")
    assert isinstance(rand["gamma"], Categorical) and isinstance(rand["seed"], Integer)


def test_unknown_space_and_wrong_method_are_user_errors():
    with pytest.raises(UserError, match="bmssl-delta"):
        sp.get_space("delta")
    with pytest.raises(UserError, match="does not apply to method 'bissl'"):
        sp.get_space("bmssl-delta").target_for("bissl")


def test_trial_config_layers_base_preset_yaml_and_params(tmp_path):
    target = get_target("simclr")
    path = tmp_path / "base.yaml"
    path.write_text("lr: 0.01\nwidth: 32\n")
    base = target.base_config(path, {"steps": 7}, preset="cpu")
    # the YAML's width beats the preset's; the override beats both
    assert (base.width, base.lr, base.steps, base.eval_episodes) == (32, 0.01, 7, 100)
    import dataclasses

    trial = target.trial_config(dataclasses.asdict(base), {"augment": "weak", "seed": 5})
    assert (trial.augment, trial.seed, trial.lr) == ("weak", 5, 0.01)
    with pytest.raises(UserError, match="not allowed|choose one of"):
        target.trial_config(dataclasses.asdict(base), {"augment": "extreme"})


def test_tune_metrics_keeps_finite_numbers_and_needs_val_acc():
    out = tune_metrics({"val_acc": 50.0, "loss": float("nan"), "note": "x", "step": 3.0}, 3)
    assert out == {"val_acc": 50.0, "step": 3}
    with pytest.raises(KeyError, match="val_acc"):
        tune_metrics({"loss": 1.0}, 1)


# -- CLI errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "bmssl", "--space", "nope"], "unknown search space 'nope'"),
        (["search", "bissl", "--space", "bmssl-delta"], "does not apply to method 'bissl'"),
        (["search", "bmssl", "--space", "bmssl-delta", "--num-samples", "0"], "--num-samples"),
        (["search", "bmssl", "--space", "bmssl-delta", "--gpus-per-trial", "-1"], "gpus"),
        (["search", "bmssl", "--space", "bmssl-delta", "--gpus-per-trial", "1.5"], "fraction"),
        (["search", "bmssl", "--space", "bmssl-delta", "--cpus-per-trial", "0"], "cpus"),
        (["search", "bmssl", "--space", "bmssl-delta", "--storage", "s3://b/x"], "URI"),
        (["search", "bmssl", "--space", "bmssl-delta", "--set", "nope=1"], "unknown BMSSLConfig"),
        (["search", "bmssl", "--space", "bmssl-delta", "--set", "steps"], "key=value"),
        (["search", "bmssl", "--space", "bmssl-delta", "--seeds", "a,b"], "comma-separated"),
        (["search", "bmssl", "--space", "bmssl-delta", "--config", "/no/such.yaml"], "exist"),
        (["report", "/no/such/search"], "tuning_spec.json"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the repository
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_cli_lists_spaces(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in sp.SPACES)


def test_plan_defaults():
    plan = make_plan(SearchRequest("bmssl", "bmssl-delta", overrides=dict(TINY_BMSSL)))
    assert (plan["search"], plan["scheduler"], plan["num_samples"]) == ("grid", "asha", 1)
    assert (plan["max_t"], plan["grace_period"]) == (2, 1)
    plan = make_plan(SearchRequest("bissl", "bissl-lambda-gamma", num_samples=3))
    assert (plan["search"], plan["scheduler"], plan["num_samples"]) == ("random", "asha", 3)
    assert plan["max_t"] == plan["base"]["alternations"]


# -- report ---------------------------------------------------------------------------------


def _record(tid, aug, acc, step, status="TERMINATED", history=None, error=None):
    last = {} if acc is None else {"val_acc": acc, "val_ci95": 2.0, "step": float(step)}
    return TrialRecord(tid, status, {"augment": aug}, 7, last, history or [], error)


def test_best_prefers_trials_trained_for_the_full_budget():
    stopped_early = _record("a", "none", 90.0, 2)
    full = _record("b", "weak", 60.0, 6)
    better_full = _record("c", "strong", 61.0, 6)
    never_started = _record("d", "default", None, 0, status="PENDING")
    assert best_record([stopped_early, full, better_full, never_started]) is better_full
    assert best_record([never_started]) is None


def test_report_files(tmp_path):
    target = get_target("simclr")
    base = target.base_config(None, {"steps": 6})
    axes = sp.get_space("augment-strength").axes(base)
    history = [{"step": 3.0, "val_acc": 40.0}, {"step": 6.0, "val_acc": 45.0}]
    records = [
        _record("t0", "none", 45.0, 6, history=history),
        _record("t1", "weak", 50.0, 6),
        _record("t2", "strong", 55.0, 3),
        _record("t3", "default", None, 0, status="ERROR", error="ValueError: boom"),
        _record("t4", "default", None, 0, status="PENDING"),
    ]
    plan = {"name": "s", "method": "simclr", "space": "augment-strength", "sessions": []}
    import dataclasses

    from bmssl.config import config_to_yaml

    best_cfg = target.trial_config(dataclasses.asdict(base), {"augment": "weak", "seed": 7})
    paths = write_report(records, plan, axes, tmp_path / "report", config_to_yaml(best_cfg))
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
    assert paths.plot_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_config(SimCLRConfig, paths.best_yaml)
    assert loaded == best_cfg


# -- Ray ------------------------------------------------------------------------------------


def _result_lines(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sorted(experiment.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = rows
    return out


def _wait_for_new_report(driver, experiment: Path, seen: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if sum(map(len, _result_lines(experiment).values())) > seen:
            return
        time.sleep(0.3)
    raise AssertionError(f"no new report before the driver ended:\n{log.read_text()[-3000:]}")


@pytest.mark.ray
def test_killed_then_interrupted_then_resumed_search_finishes_every_trial(local_ray, tmp_path):
    """Kill the driver (SIGKILL) after the first report, resume, Ctrl-C (SIGINT) that after its
    first report, resume again: every trial finishes, no result reported before an interrupt is
    lost or changed, trials that never started run, each session is recorded."""
    import ray

    from bmssl.data.views import STRENGTHS

    storage = tmp_path / "store"
    experiment = storage / "bmssl-augment-strength"
    overrides = [f"{k}={v}" for k, v in {**TINY_BMSSL, "steps": 6}.items()]
    # The drivers join this test's Ray, as they would join a cluster's (--address).
    address = ray.get_runtime_context().gcs_address
    cmd = [
        sys.executable, "-m", "tuning", "search", "bmssl", "--space", "augment-strength",
        "--address", address, "--storage", str(storage), "--quiet", "--set", *overrides,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reported: dict[str, list[dict]] = {}
    for session, (extra, sig, code) in enumerate(
        [([], signal.SIGKILL, -9), (["--resume"], signal.SIGINT, 130)]
    ):
        log = tmp_path / f"session{session}.log"
        with log.open("w") as out:
            driver = subprocess.Popen(
                [*cmd, *extra], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            seen = sum(map(len, _result_lines(experiment).values()))
            _wait_for_new_report(driver, experiment, seen, log)
            driver.send_signal(sig)
            assert driver.wait(timeout=90) == code, log.read_text()[-3000:]
        reported = _result_lines(experiment)
        unfinished = [r for r in load_records(experiment, ["augment"]) if r.status != "TERMINATED"]
        assert unfinished, "every trial finished before the interrupt took effect"
    assert "--resume" in log.read_text()  # the Ctrl-C'ed driver says how to go on

    final = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150
    )
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    records = load_records(experiment, ["augment"])
    assert len(records) == len(STRENGTHS) and {r.status for r in records} == {"TERMINATED"}
    assert sorted(r.params["augment"] for r in records) == sorted(STRENGTHS)
    assert all(
        r.step == 6 and [h["step"] for h in r.history] == [1, 2, 3, 4, 5, 6] for r in records
    )
    after = _result_lines(experiment)
    for trial, rows in reported.items():
        # what was reported before the interrupts is still there, unchanged
        kept = {r["step"]: r["val_acc"] for r in after[trial]}
        assert all(kept[r["step"]] == r["val_acc"] for r in rows)
    plan = json.loads((experiment / "tuning_spec.json").read_text())
    # the SIGKILLed session never got to record itself; the other two did
    assert [s["resumed"] for s in plan["sessions"]] == [True, True]
    rows = list(csv.DictReader((experiment / "report" / "trials.csv").open()))
    assert len(rows) == len(STRENGTHS) and {r["status"] for r in rows} == {"TERMINATED"}
    assert "unfinished" not in final.stderr


@pytest.fixture(scope="module")
def local_ray():
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old


@pytest.mark.ray
def test_bmssl_delta_search_runs_the_real_trainer(local_ray, tmp_path):
    from bmssl.meta import BMSSLConfig

    request = SearchRequest(
        "bmssl", "bmssl-delta", overrides=dict(TINY_BMSSL), storage=str(tmp_path), verbose=0
    )
    outcome = run_search(request)
    records = outcome.records
    assert not outcome.interrupted and len(records) == 5
    assert sorted(r.params["bootstrap_steps"] for r in records) == [0, 1, 2, 5, 10]
    assert all(r.history and r.history[0]["step"] == 1 for r in records)  # reports every step
    assert len({r.seed for r in records}) == 5  # a seed per trial, recorded
    best = load_config(BMSSLConfig, outcome.report.best_yaml)
    assert best.bootstrap_steps == outcome.best.params["bootstrap_steps"]
    assert best.seed == outcome.best.seed and best.width == 4
    assert outcome.report.plot_png.stat().st_size > 1000
    # a second search under the same name must not clobber the first
    with pytest.raises(UserError, match="--resume"):
        run_search(request)
    # resuming with other settings is refused, naming what changed
    changed = {**vars(request), "resume": True, "overrides": {**TINY_BMSSL, "steps": 3}}
    with pytest.raises(UserError, match="steps: 2 -> 3"):
        run_search(SearchRequest(**changed))
    # resuming a finished search changes nothing and reruns nothing
    again = run_search(SearchRequest(**{**vars(request), "resume": True}))
    assert [(r.trial_id, r.last) for r in again.records] == [(r.trial_id, r.last) for r in records]
    # the report can be rebuilt from the directory alone
    outcome.report.trials_csv.unlink()
    assert main(["report", str(outcome.experiment_dir)]) == 0
    assert len(list(csv.DictReader(outcome.report.trials_csv.open()))) == 5


@pytest.mark.ray
def test_bissl_lambda_gamma_and_finetune_searches(local_ray, tmp_path):
    from bissl.trainer import BiSSLConfig

    outcome = run_search(
        SearchRequest(
            "bissl",
            "bissl-lambda-gamma",
            overrides=dict(TINY_BISSL),
            num_samples=2,
            storage=str(tmp_path),
            verbose=0,
        )
    )
    assert len(outcome.records) == 2 and not outcome.interrupted
    for r in outcome.records:
        assert 1e-4 <= r.params["lam"] <= 1e-1 and r.params["gamma"] in (0.01, 0.1, 1.0)
        assert r.val_acc is not None and math.isfinite(r.val_acc)
    pretext = Path(outcome.plan["base"]["init_from"])
    assert pretext.is_file() and pretext.is_relative_to(outcome.experiment_dir)
    best = load_config(BiSSLConfig, outcome.report.best_yaml)
    assert best.lam == pytest.approx(outcome.best.params["lam"])

    finetune = run_search(
        SearchRequest(
            "bissl",
            "finetune-lr-wd",
            overrides={**TINY_BISSL, "init_from": str(pretext)},
            num_samples=2,
            storage=str(tmp_path),
            verbose=0,
        )
    )
    assert {r.status for r in finetune.records} == {"TERMINATED"}
    for r in finetune.records:
        assert 1e-4 <= r.params["finetune_lr"] <= 1 and 1e-5 <= r.params["finetune_wd"] <= 1e-2
        assert r.step == 2 and r.val_acc is not None
    tuned = yaml.safe_load(finetune.report.best_yaml.read_text())
    assert tuned["finetune_lr"] == pytest.approx(finetune.best.params["finetune_lr"])
