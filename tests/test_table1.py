import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "reproduce" / "table1.py"

TINY_PROFILE = """
profile: tiny
episodes: 20
n_query: 5
classifier: proto
seed: 0
methods: [random, simclr]
model: {backbone: conv4, width: 8, proj_hidden: 16, proj_dim: 8}
datasets:
  digits: {image_size: 28, cells: [5w1s, 5w5s]}
method_overrides:
  simclr: {steps: 3, eval_every: 3, eval_episodes: 5, batch_size: 16}
"""


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
    assert 0 <= cell["mean"] <= 100 and cell["episodes"] == 20
    assert (out / "tiny" / "table1.csv").read_text().startswith("method,digits 5w1s,digits 5w5s")
    assert (out / "tiny" / "runs" / "simclr" / "digits" / "checkpoints" / "last.pt").is_file()
    # a rerun reuses every finished cell: no training, identical table
    mtime = (
        (out / "tiny" / "runs" / "simclr" / "digits" / "checkpoints" / "last.pt").stat().st_mtime
    )
    second = run(["--profile", str(profile), "--out", str(out), "--quiet"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert (
        out / "tiny" / "runs" / "simclr" / "digits" / "checkpoints" / "last.pt"
    ).stat().st_mtime == mtime


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "dino"], "unknown method 'dino'"),
        (["--datasets", "cifar"], "dataset 'cifar' is not in the tiny profile"),
        (["--episodes", "0"], "--episodes must be at least 1"),
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
