"""Real Ray Tune searches over the real trainers (and a toy method registered by the tests).

The tests start a local Ray (2 CPUs, no dashboard, RAY_TMPDIR in a temp dir) and run tiny
configs: a few steps of width-4 networks, a handful of validation episodes.
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

from bmssl.config import load_config
from bmssl.errors import UserError
from bmssl.methods import get_method
from tests.tuning.helpers import RAY_CHATTER, TINY_BISSL, TINY_BMSSL, as_tokens, register_toy
from tuning.__main__ import main
from tuning.plan import SearchRequest
from tuning.records import load_records
from tuning.search import run_search
from tuning.storage import location_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old


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
    lost or changed, trials that never started run, each session is recorded; --quiet keeps
    Ray's own output off the terminal."""
    import ray

    from bmssl.data.views import STRENGTHS

    storage = tmp_path / "store"
    experiment = storage / "bmssl-augment-strength"
    # The drivers join this test's Ray, as they would join a cluster's (--address).
    address = ray.get_runtime_context().gcs_address
    cmd = [
        sys.executable, "-m", "tuning", "search", "bmssl", "--space", "augment-strength",
        "--address", address, "--out", str(storage), "--quiet", "--seeds", "0",
        *as_tokens({**TINY_BMSSL, "steps": 6}),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reported: dict[str, list[dict]] = {}
    for session, (extra, sig, code) in enumerate(
        [([], signal.SIGKILL, -9), (["--resume"], signal.SIGINT, 130)]
    ):
        log = tmp_path / f"session{session}.log"
        with log.open("w") as out:
            # SIGINT's default restored: a shell's background jobs inherit it ignored.
            driver = subprocess.Popen(
                [*cmd, *extra], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
            seen = sum(map(len, _result_lines(experiment).values()))
            _wait_for_new_report(driver, experiment, seen, log)
            driver.send_signal(sig)
            assert driver.wait(timeout=90) == code, log.read_text()[-3000:]
        reported = _result_lines(experiment)
        records = load_records(location_of(experiment), ["augment"])
        assert [r for r in records if r.status != "TERMINATED"], "all finished before the interrupt"
    assert "--resume" in log.read_text()  # the Ctrl-C'ed driver says how to go on

    final = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150
    )
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    records = load_records(location_of(experiment), ["augment"])
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
    output = final.stdout + final.stderr
    assert not [c for c in RAY_CHATTER if c in output], output[-3000:]
    assert "search 'bmssl-augment-strength': 5/5 trials finished" in final.stdout


@pytest.mark.ray
def test_bmssl_delta_search_runs_two_seeds_per_arm_on_a_file_uri(local_ray, tmp_path):
    from bmssl.meta import BMSSLConfig

    request = SearchRequest(
        "bmssl", "bmssl-delta", overrides=dict(TINY_BMSSL), out=f"file://{tmp_path}", quiet=True
    )
    outcome = run_search(request)
    records = outcome.records
    assert not outcome.interrupted and len(records) == 10
    assert outcome.plan.scheduler == "fifo" and outcome.plan.seeds == [0, 1]
    arms: dict[int, set[int]] = {}
    for r in records:
        arms.setdefault(r.params["bootstrap_steps"], set()).add(r.seed)
    assert arms == {d: {0, 1} for d in (0, 1, 2, 5, 10)}  # every arm, both seeds
    assert all(r.step == 2 and [h["step"] for h in r.history] == [1, 2] for r in records)
    report = outcome.experiment_dir / "report"
    assert "## Arms" in (report / "summary.md").read_text()
    best = load_config(BMSSLConfig, report / "best_config.yaml")
    assert best.bootstrap_steps == outcome.best.params["bootstrap_steps"]
    assert best.seed == outcome.best.seed and best.width == 4
    assert (report / "accuracy_vs_params.png").stat().st_size > 1000
    # Tune's per-trial logs: result.json, progress.csv and TensorBoard events
    trial_dir = next(outcome.experiment_dir.glob("trial_*"))
    assert (trial_dir / "progress.csv").is_file() and list(trial_dir.glob("events.out.tfevents*"))
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
    # the report can be rebuilt from the directory alone, given as a path or as the URI
    (report / "trials.csv").unlink()
    assert main(["report", f"file://{outcome.experiment_dir}"]) == 0
    assert len(list(csv.DictReader((report / "trials.csv").open()))) == 10


@pytest.mark.ray
def test_bissl_searches_optimise_the_fine_tuned_accuracy(local_ray, tmp_path):
    from bissl.config import BiSSLConfig

    outcome = run_search(
        SearchRequest(
            "bissl",
            "bissl-lambda-gamma",
            overrides=dict(TINY_BISSL),
            num_samples=2,
            out=str(tmp_path),
            quiet=True,
        )
    )
    assert len(outcome.records) == 2 and not outcome.interrupted
    assert outcome.plan.scheduler == "fifo"
    for r in outcome.records:
        assert 1e-4 <= r.params["bilevel.lam"] <= 1e-1
        assert r.params["bilevel.gamma"] in (0.01, 0.1, 1.0)
        # the metric is the fine-tuned θ_P's; BiSSL's own accuracy is kept beside it
        assert r.val_acc is not None and math.isfinite(r.val_acc)
        assert "bissl_val_acc" in r.last and "val_top1" in r.last
        assert [h["step"] for h in r.history] == [1, 2]
        assert "val_acc" not in r.history[0] and "bissl_val_acc" in r.history[0]
        assert r.history[-1]["val_acc"] == r.val_acc
    pretext = Path(outcome.plan.base.init_from)
    assert pretext.is_file() and pretext.is_relative_to(outcome.experiment_dir)
    best_yaml = outcome.experiment_dir / "report" / "best_config.yaml"
    tuned = yaml.safe_load(best_yaml.read_text())
    assert tuned["bilevel"]["lam"] == pytest.approx(outcome.best.params["bilevel.lam"])
    best = load_config(BiSSLConfig, best_yaml)
    assert best.bilevel.gamma == outcome.best.params["bilevel.gamma"]
    assert "fine-tuned" in (outcome.experiment_dir / "report" / "summary.md").read_text()

    finetune = run_search(
        SearchRequest(
            "bissl-finetune",
            "finetune-lr-wd",
            overrides={**TINY_BISSL, "init_from": str(pretext)},
            num_samples=2,
            out=str(tmp_path),
            quiet=True,
        )
    )
    assert {r.status for r in finetune.records} == {"TERMINATED"}
    for r in finetune.records:
        assert (
            1e-4 <= r.params["finetune.lr"] <= 1
            and 1e-5 <= r.params["finetune.weight_decay"] <= 1e-2
        )
        assert r.step == 2 and r.val_acc is not None
    tuned = yaml.safe_load((finetune.experiment_dir / "report" / "best_config.yaml").read_text())
    assert tuned["finetune"]["lr"] == pytest.approx(finetune.best.params["finetune.lr"])


@pytest.mark.ray
def test_a_method_registered_outside_the_packages_is_searchable(local_ray, tmp_path):
    toy = register_toy()
    assert get_method("toy") is toy
    outcome = run_search(
        SearchRequest("toy", "augment-strength", out=str(tmp_path), quiet=True, scheduler="asha")
    )
    assert len(outcome.records) == 10 and {r.status for r in outcome.records} == {"TERMINATED"}
    # ToyTrainer: val_acc = 50 + 5 * rank(augment) + seed + step, so "affine", seed 1 wins
    assert (outcome.best.params["augment"], outcome.best.seed) == ("affine", 1)
    assert outcome.best.val_acc == 50 + 5 * 4 + 1 + 2
