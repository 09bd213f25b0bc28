import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.reproduce.tiny_profile import TINY_PROFILE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "reproduce" / "table1.py"


def run(args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PROFILE)
    return path


def test_table1_end_to_end_and_cached_rerun(tmp_path, profile):
    out = tmp_path / "res"
    first = run(["--profile", str(profile), "--out", str(out), "--quiet"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "| Random init |" in first.stdout and "| SimCLR |" in first.stdout
    assert "digits 5w1s" in first.stdout
    data = json.loads((out / "tiny" / "table1.json").read_text())
    cell = data["rows"]["SimCLR"]["digits 5w5s"]
    assert 0 <= cell["mean"] <= 100 and cell["episodes"] == [20, 20] and cell["seeds"] == 2
    assert cell["half_width"] is not None and "episode_half_width" in cell
    assert (out / "tiny" / "table1.csv").read_text().startswith("method,digits 5w1s,digits 5w5s")
    for name in ("table1.tex", "accuracy_vs_shots.png", "learning_curves.png"):
        assert (out / "tiny" / name).is_file(), name
    assert "budget" in first.stdout and "paired t-test across seeds, Holm-adjusted" in first.stdout
    assert "Power (2 seeds, vs SimCLR" in first.stdout
    claims = json.loads((out / "tiny" / "claims.json").read_text())
    assert claims["table"] == "table1" and claims["claims"] == []  # no BMSSL row: no claim
    # the trained model is exported beside its checkpoints, for the tables that reuse it
    simclr_run = out / "tiny" / "runs" / "simclr" / "digits" / "seed0"
    assert (simclr_run / "backbone.pt").is_file() and (simclr_run / "model.json").is_file()
    assert (
        out / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "checkpoints" / "last.pt"
    ).is_file()
    # a rerun reuses every finished cell: no training, identical table
    mtime = (
        (out / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "checkpoints" / "last.pt")
        .stat()
        .st_mtime
    )
    second = run(["--profile", str(profile), "--out", str(out), "--quiet"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert (
        out / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "checkpoints" / "last.pt"
    ).stat().st_mtime == mtime


def test_parallel_jobs_give_the_same_table(tmp_path, profile):
    """--jobs 2 trains in spawned workers; seeds make every cell equal to the in-process run."""
    serial = run(["--profile", str(profile), "--out", str(tmp_path / "a"), "--jobs", "1"], tmp_path)
    parallel = run(
        ["--profile", str(profile), "--out", str(tmp_path / "b"), "--jobs", "2", "--quiet"],
        tmp_path,
    )
    assert serial.returncode == 0 and parallel.returncode == 0, serial.stderr + parallel.stderr
    a = json.loads((tmp_path / "a" / "tiny" / "table1.json").read_text())
    b = json.loads((tmp_path / "b" / "tiny" / "table1.json").read_text())
    assert a["rows"] == b["rows"]  # every seed mean and interval; only wall times may differ


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_ctrl_c_stops_the_workers_and_a_rerun_finishes(tmp_path, profile):
    """SIGINT to a --jobs 2 run: exit 130 with one line, no traceback, workers gone; the same
    command again completes the table (finished cells are kept)."""
    profile.write_text(
        TINY_PROFILE.replace("steps: 3, eval_every: 3", "steps: 50000, eval_every: 50")
    )
    out = tmp_path / "res"
    cmd = [sys.executable, str(SCRIPT), "--profile", str(profile), "--out", str(out), "--quiet"]
    # A shell runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    # ignored: restore the default so the run gets the Ctrl-C whatever launched the tests.
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    history = out / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "history.json"
    deadline = time.monotonic() + 120
    while not history.is_file() and time.monotonic() < deadline:  # SimCLR is training
        time.sleep(0.2)
    assert history.is_file(), "SimCLR never reached its first validation"
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = children.read_text().split() if children.is_file() else []
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
    assert not alive, f"worker processes {alive} outlived the interrupted run"
    profile.write_text(TINY_PROFILE)  # a shorter run: SimCLR is retrained, random init reused
    rerun = run(["--profile", str(profile), "--out", str(out), "--quiet", "--jobs", "2"], tmp_path)
    assert rerun.returncode == 0 and "| SimCLR |" in rerun.stdout, rerun.stderr


def test_edited_profile_reruns_only_what_changed(tmp_path, profile):
    out = tmp_path / "res"
    assert run(["--profile", str(profile), "--out", str(out), "--quiet"], tmp_path).returncode == 0
    ckpt = out / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "checkpoints" / "last.pt"
    random_cell = next((out / "tiny" / "cells").glob("random__digits__seed0.json"))
    random_mtime, ckpt_mtime = random_cell.stat().st_mtime, ckpt.stat().st_mtime
    profile.write_text(TINY_PROFILE.replace("batch_size: 16", "batch_size: 8"))
    rerun = run(["--profile", str(profile), "--out", str(out), "--quiet"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert random_cell.stat().st_mtime == random_mtime  # random init's settings did not change
    assert ckpt.stat().st_mtime != ckpt_mtime  # SimCLR was retrained, not resumed or reused
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["step"] == 3 and len(saved["history"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "dino"], "unknown method 'dino'"),
        (["--datasets", "cifar"], "dataset 'cifar' is not in the tiny profile"),
        (["episodes=0"], "episodes must be positive"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--reference", "bmssl"], "reference='bmssl' is not one of the profile's methods"),
        (["colour=red"], "unknown Table1Profile option"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--data-root", "nonsense"], "name=value"),
    ],
)
def test_bad_input_exits_2_without_output(tmp_path, profile, args, message):
    out = tmp_path / "res"
    result = run(["--profile", str(profile), "--out", str(out), *args], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_cells_and_profiles_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_PROFILE.replace("[5w1s, 5w5s]", "[6w1s]"))
    result = run(["--profile", str(bad), "--out", str(tmp_path / "o")], tmp_path)
    assert (
        result.returncode == 2 and "n_way=6 is larger than the 5 held-out classes" in result.stderr
    )
    bad.write_text(TINY_PROFILE.replace("[5w1s, 5w5s]", "[5w200s]"))
    result = run(["--profile", str(bad), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2 and "k_shot=200" in result.stderr
    bad.write_text(TINY_PROFILE.replace("episodes: 20", "episodes: abc"))
    result = run(["--profile", str(bad), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2 and "episodes='abc' is not an integer" in result.stderr
    bad.write_text(TINY_PROFILE.replace("episodes: 20", "episodes: [20"))
    result = run(["--profile", str(bad), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad.write_text(TINY_PROFILE.replace("steps: 3,", "steps: 3, lr: -1,"))
    result = run(["--profile", str(bad), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2 and "lr must be positive" in result.stderr
    result = run(["--profile", "gpu-cluster"], tmp_path)
    assert result.returncode == 2 and "unknown profile 'gpu-cluster'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_paper_profile_without_data_says_how_to_get_it(tmp_path):
    result = run(["--profile", "paper", "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2
    assert "omniglot" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
