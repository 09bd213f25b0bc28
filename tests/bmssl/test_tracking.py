"""tracker=none|tensorboard|mlflow on the trainers, the run folder's provenance.json, and the
search's MLflow callback; MLflow runs against a real local SQLite store, never a mock."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from bmssl.config import load_config
from bmssl.errors import UserError
from bmssl.simclr import SimCLRConfig, SimCLRTrainer

TINY = dict(width=8, proj_hidden=16, proj_dim=8, batch_size=16, eval_episodes=5, dataset="digits")
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="MLflow is not installed (the optional extra: pip install 'bmssl-harness[track]')",
)


def test_default_tracker_writes_the_run_record_and_provenance_but_no_events(tmp_path) -> None:
    trainer = SimCLRTrainer(SimCLRConfig(steps=2, eval_every=2, **TINY), tmp_path, progress=False)
    trainer.fit()
    assert not (tmp_path / "tb").exists() and not (tmp_path / "tracking.json").exists()
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["method"] == "simclr" and record["configs"]["steps"] == 2
    assert record["datasets"]["digits 28px"]["kind"] == "generated"
    assert [s["steps"] for s in record["sessions"]] == [[0, 2]]
    # a resume keeps the first record and adds its session
    again = SimCLRTrainer(SimCLRConfig(steps=3, eval_every=3, **TINY), tmp_path, progress=False)
    again.fit()
    resumed = json.loads((tmp_path / "provenance.json").read_text())
    assert resumed["created_at"] == record["created_at"]
    assert [s["steps"] for s in resumed["sessions"]] == [[0, 2], [2, 3]]
    assert resumed["wall_time_s"] == pytest.approx(
        sum(s["wall_time_s"] for s in resumed["sessions"])
    )


def test_tracking_and_provenance_leave_the_numbers_alone(tmp_path) -> None:
    """A run with the tensorboard tracker trains the same weights as one with none."""
    if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        pytest.skip("no TensorBoard writer installed")
    plain = SimCLRTrainer(SimCLRConfig(steps=2, eval_every=1, **TINY), None, progress=False)
    plain.fit()
    config = SimCLRConfig(steps=2, eval_every=1, tracker="tensorboard", **TINY)
    tracked = SimCLRTrainer(config, tmp_path, progress=False)
    tracked.fit()
    for (name, a), (_, b) in zip(
        plain.encoder.state_dict().items(), tracked.encoder.state_dict().items()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))


def test_an_unknown_tracker_and_a_missing_mlflow_are_one_line_errors(
    tmp_path, monkeypatch, capsys
) -> None:
    with pytest.raises(UserError, match="unknown tracker .wandb."):
        load_config(SimCLRConfig, None, ["tracker=wandb"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"bmssl-harness\[track\]"):
        load_config(SimCLRConfig, None, ["tracker=mlflow"])
    from bmssl.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "simclr", "--out", str(tmp_path / "run"), "tracker=mlflow"])
    assert exit_.value.code == 2
    assert "pip install 'bmssl-harness[track]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # the tracker itself refuses too when the import fails (an extra removed after validation)
    from bmssl import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(UserError, match="needs MLflow"):
        tracking.MLflowTracker(None, "simclr", "run")


@needs_mlflow
def test_mlflow_records_params_metrics_and_artefacts_and_a_resume_continues_the_run(
    tmp_path,
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store" / "mlflow.db"
    run_dir = tmp_path / "runs" / "simclr" / "seed0"
    options = dict(tracker="mlflow", tracking_uri=str(store), log_every=1, **TINY)
    SimCLRTrainer(SimCLRConfig(steps=2, eval_every=2, **options), run_dir, progress=False).fit()
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("simclr")
    assert experiment is not None
    assert experiment.artifact_location.startswith((tmp_path / "store").as_uri())
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "runs/simclr/seed0"
    assert run.data.params["dataset"] == "digits" and run.data.params["steps"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "val_acc" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "history.json", "provenance.json"} <= files
    # resumed with more steps: the same MLflow run goes on
    SimCLRTrainer(SimCLRConfig(steps=3, eval_every=3, **options), run_dir, progress=False).fit()
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]


def test_search_trials_leave_tracking_to_the_search() -> None:
    """A search with a tracker logs through Tune's callback, so its trials' trainers track
    nothing themselves; without one there is no callback."""
    from bmssl import tracking
    from tuning.trainables import _device_for_trial

    assert tracking.tune_callbacks("none", None, "x") == []
    params = {"lr": 0.1, "device": "cpu"}  # a device given: no Ray needed to choose one
    assert _device_for_trial(params, SimCLRConfig(tracker="mlflow"))["tracker"] == "none"
    assert "tracker" not in _device_for_trial(params, SimCLRConfig())


def test_cached_table_results_stay_valid_with_the_new_fields() -> None:
    """tracker and tracking_uri at their defaults leave every settings fingerprint as it was."""
    import dataclasses

    from reproduce.tables import fingerprint, settings_fingerprint

    config = SimCLRConfig(**TINY)
    before = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("device", "tracker", "tracking_uri")
    }
    assert settings_fingerprint(config) == fingerprint(before)
    assert settings_fingerprint(SimCLRConfig(tracker="tensorboard", **TINY)) != fingerprint(before)


def test_run_names_are_the_run_folder_s_last_parts(tmp_path: Path) -> None:
    from bmssl.tracking import resolve_uri, run_name_of

    assert run_name_of(tmp_path / "a" / "b" / "c", "x") == "a/b/c"
    assert resolve_uri(str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_uri("http://host:5000") == "http://host:5000"


@needs_mlflow
@pytest.mark.ray
def test_a_search_with_tracker_mlflow_logs_every_trial_and_records_its_provenance(
    tmp_path, monkeypatch
) -> None:
    """A real (tiny) Ray Tune search: each trial an MLflow run through Tune's callback, no
    trainer-side runs, and the session's provenance in the spec and the report."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from bmssl import tracking
    from tests.tuning.helpers import TINY_BMSSL
    from tuning.plan import SearchRequest
    from tuning.search import run_search

    store = tmp_path / "mlflow.db"
    (callback,) = tracking.tune_callbacks("mlflow", str(store), "bmssl-bmssl-delta")
    assert isinstance(callback, MLflowLoggerCallback)
    assert callback.tracking_uri == f"sqlite:///{store}" and callback.should_save_artifact
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths stay short
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    overrides = {**TINY_BMSSL, "tracker": "mlflow", "tracking_uri": str(store)}
    try:
        outcome = run_search(
            SearchRequest(
                "bmssl", "bmssl-delta", overrides=overrides, seeds=[0], out=str(tmp_path / "s"),
                quiet=True,
            )
        )  # fmt: skip
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert len(outcome.records) == 5 and not outcome.interrupted
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(outcome.plan.name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["bootstrap_steps"] for r in runs} == {"0", "1", "2", "5", "10"}
    assert all("val_acc" in r.data.metrics for r in runs)
    assert client.get_experiment_by_name("bmssl") is None  # the trainers tracked nothing
    spec = json.loads((outcome.experiment_dir / "tuning_spec.json").read_text())
    record = spec["sessions"][-1]["provenance"]
    assert record["code"]["version"] and record["datasets"]["digits 28px"]["kind"] == "generated"
    summary = (outcome.experiment_dir / "report" / "summary.md").read_text()
    assert "- provenance: bmssl-harness" in summary
