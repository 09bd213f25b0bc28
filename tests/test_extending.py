"""README "Extending the harness": its three example modules (a method, a dataset, a backbone),
registered from outside the packages, run through ``python -m bmssl``, ``reproduce/table1.py``
and a ``python -m tuning`` search, exactly as the README prints them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("noise_contrast", "stripes", "tiny_mlp")


def readme_examples() -> dict[str, str]:
    """``{module name: code}`` of the README section's python blocks (first line names it)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Extending the harness", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {re.match(r"# (\w+)\.py", b).group(1): b for b in blocks}  # type: ignore[union-attr]


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    examples = readme_examples()
    assert set(examples) == set(MODULES)
    for name, code in examples.items():
        (tmp_path / f"{name}.py").write_text(code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    env["BMSSL_PLUGINS"] = ",".join(MODULES)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


TRAIN = ["dataset=stripes", "backbone=mlp", "width=16", "proj_hidden=16", "proj_dim=8"]


def test_method_dataset_backbone_train_and_evaluate(tmp_path: Path, plugin_env) -> None:
    assert "noise-contrast" in run(["-m", "bmssl", "methods"], plugin_env, tmp_path).stdout
    out = tmp_path / "run"
    args = ["train", "noise-contrast", "--out", str(out), "--quiet", *TRAIN]
    run(["-m", "bmssl", *args, "steps=4", "eval_every=2", "eval_episodes=5"], plugin_env, tmp_path)
    assert (out / "checkpoints" / "best.pt").is_file()
    shown = run(["-m", "bmssl", "eval", "--out", str(out), "episodes=10"], plugin_env, tmp_path)
    assert "stripes test 5-way 1-shot" in shown.stdout


def test_method_is_a_table1_row(tmp_path: Path, plugin_env) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "profile: ext\nepisodes: 10\nn_query: 5\nseeds: [0, 1]\nreference: random\njobs: 2\n"
        "methods: [random, noise-contrast]\n"
        "model: {backbone: mlp, width: 16, proj_hidden: 16, proj_dim: 8}\n"
        "datasets: {stripes: {cells: [5w1s]}}\n"
        "method_overrides: {noise-contrast: {steps: 4, eval_every: 2, eval_episodes: 5}}\n"
    )
    out = tmp_path / "table"
    script = str(ROOT / "reproduce" / "table1.py")
    shown = run(
        [script, "--config", str(profile), "--out", str(out), "--quiet"], plugin_env, tmp_path
    )
    assert "| Noise contrast |" in shown.stdout and "stripes 5w1s" in shown.stdout


@pytest.mark.ray
def test_method_is_searchable(tmp_path: Path, plugin_env) -> None:
    import tempfile

    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    plugin_env["RAY_TMPDIR"] = ray_dir
    args = [
        "-m", "tuning", "search", "noise-contrast", "--space", "scaling-images", "--out",
        str(tmp_path / "tune"), "--num-cpus", "2", "--seeds", "0", "--quiet", *TRAIN,
        "steps=4", "eval_every=2", "eval_episodes=5",
    ]  # fmt: skip
    try:
        shown = run(args, plugin_env, tmp_path)
    finally:
        import shutil

        shutil.rmtree(ray_dir, ignore_errors=True)
    assert "trials finished" in shown.stdout
