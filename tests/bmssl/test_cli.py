"""The ``python -m bmssl`` command line: every registered method trains, evaluates and exports
through one dialect; the run record (metrics.csv, best.pt) is written as documented."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bmssl.__main__ import main as cli_main
from bmssl.config import load_config
from bmssl.meta import BMSSLConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset=digits", "width=4", "proj_hidden=8", "proj_dim=4", "eval_episodes=5"]
EXTRA = {
    "bmssl": ["task_images=4", "meta_batch=1", "steps=4", "eval_every=2", "log_every=1"],
    "simclr": ["batch_size=8", "steps=4", "eval_every=2", "log_every=1"],
    "protonet": ["n_way=3", "steps=4", "eval_every=2", "log_every=1"],
}


@pytest.mark.parametrize("method", ["bmssl", "simclr", "protonet"])
def test_train_eval_export_every_method(tmp_path, capsys, method):
    out = tmp_path / method
    cli_main(["train", method, "--out", str(out), "--quiet", *TINY, *EXTRA[method]])
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["step"] == 4
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [float(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_acc"] and not rows[0]["val_acc"]  # validation rows carry val metrics
    cli_main(["eval", "--out", str(out), "split=val", "episodes=10", "--quiet"])
    report = json.loads((out / "eval" / "val_5way1shot_proto.json").read_text())
    assert report["episodes"] == 10 and 0 <= report["mean"] <= 100
    cli_main(["export", "--out", str(out)])
    weights = torch.load(out / "backbone.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values()) and weights


def test_metrics_csv_averages_losses_over_the_interval(tmp_path):
    """A row holds the mean of the interval's step losses, not the last step's."""
    from bmssl.simclr import SimCLRConfig, SimCLRTrainer

    cfg = SimCLRConfig(
        dataset="digits", width=4, proj_hidden=8, proj_dim=4, batch_size=8, steps=4,
        eval_every=4, eval_episodes=5, log_every=2,
    )  # fmt: skip
    trainer = SimCLRTrainer(cfg, out_dir=tmp_path, progress=False)
    losses = []
    step = trainer.train_step

    def spy(i):
        logs = step(i)
        losses.append(logs["loss"])
        return logs

    trainer.train_step = spy
    trainer.fit()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert float(rows[0]["loss"]) == pytest.approx(sum(losses[:2]) / 2)
    assert float(rows[1]["loss"]) == pytest.approx(sum(losses[2:]) / 2)


def test_methods_and_print_config(capsys):
    cli_main(["methods"])
    listed = capsys.readouterr().out
    for name in ("random", "simclr", "protonet", "bmssl", "meta-ssl", "bmssl-fo", "bissl"):
        assert name in listed
    cli_main(["print-config", "meta-ssl", "--config", "cpu", "steps=7"])
    text = capsys.readouterr().out
    assert "bootstrap_steps: 0" in text and "steps: 7" in text and "augment: affine" in text


def test_help_lists_every_option_with_type_and_default():
    proc = subprocess.run(
        [sys.executable, "-m", "bmssl", "train", "simclr", "--help"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0
    assert "temperature" in proc.stdout and "float, default 0.5" in proc.stdout


def test_config_yaml_is_the_resolved_config(tmp_path):
    out = tmp_path / "run"
    cli_main(["train", "--out", str(out), "--quiet", *TINY, *EXTRA["bmssl"]])
    assert load_config(BMSSLConfig, out / "config.yaml").width == 4


def test_user_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    run = [sys.executable, "-m", "bmssl", "train", "--out", str(out), "inner_lr=-1"]
    proc = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "inner_lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    for argv, message in [
        (["eval", "--out", str(tmp_path / "missing")], "no checkpoint"),
        (["train", "nosuch"], "unknown method 'nosuch'"),
        (["train", "meta-ssl", "bootstrap_steps=2"], "fixes bootstrap_steps=0"),
        (["train", "--config", "nosuch"], "does not exist"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_refused_resume_leaves_the_run_folder_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    cli_main(["train", "--out", str(out), "--quiet", *TINY, *EXTRA["bmssl"]])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        tiny = [t for t in TINY if t != "width=4"]
        cli_main(["train", "--out", str(out), "--quiet", *tiny, *EXTRA["bmssl"], "width=8"])
    assert exit_info.value.code == 2 and "other settings" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
