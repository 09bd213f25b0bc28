"""reproduce/crossdomain.py: Table 1's models scored on other domains, never trained twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TABLE1 = """
profile: tiny
episodes: 10
n_query: 3
seeds: [0, 1]
reference: simclr
jobs: 1
methods: [random, simclr]
model: {backbone: conv4, width: 8, proj_hidden: 16, proj_dim: 8}
datasets:
  digits: {image_size: 28, cells: [5w1s]}
method_overrides:
  simclr: {steps: 3, eval_every: 3, eval_episodes: 5, batch_size: 16}
"""

CROSSDOMAIN = """
profile: tiny
table1_profile: {table1}
source: digits
episodes: 10
n_query: 3
targets:
  glyphs: {{classes: test, cells: [5w1s, 5w2s]}}
  "imagefolder:{missing}": {{classes: all, optional: true, cells: [5w1s]}}
"""


@pytest.fixture
def profiles(tmp_path: Path) -> tuple[Path, Path, Path]:
    table1 = tmp_path / "table1_tiny.yaml"
    table1.write_text(TABLE1)
    cross = tmp_path / "cross_tiny.yaml"
    cross.write_text(CROSSDOMAIN.format(table1=table1, missing=tmp_path / "not-built"))
    tree = tmp_path / "my-set"
    rng = np.random.default_rng(0)
    for c in range(5):
        (tree / f"class{c}").mkdir(parents=True)
        for i in range(9):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tree / f"class{c}" / f"{i}.png")
    return table1, cross, tree


def no_training(monkeypatch) -> None:
    """Any attempt to build a trainer fails the test."""
    from bmssl.simclr import SimCLRTrainer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was trained again")

    monkeypatch.setattr(SimCLRTrainer, "__init__", refuse)


def run_crossdomain(cross: Path, tree: Path, tmp_path: Path) -> dict:
    from reproduce import crossdomain

    crossdomain.main([
        "--config", str(cross), "--out", str(tmp_path / "cd"), "--models", str(tmp_path / "t1"),
        "--target", f"imagefolder:{tree}", "--quiet",
    ])  # fmt: skip
    return json.loads((tmp_path / "cd" / "tiny" / "crossdomain.json").read_text())


def test_after_table1_nothing_is_trained_again(tmp_path, profiles, monkeypatch) -> None:
    from reproduce import table1

    table1_profile, cross, tree = profiles
    table1.main(["--config", str(table1_profile), "--out", str(tmp_path / "t1"), "--quiet"])
    weights = tmp_path / "t1" / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "backbone.pt"
    stamp = weights.stat().st_mtime_ns
    with monkeypatch.context() as patch:
        no_training(patch)
        data = run_crossdomain(cross, tree, tmp_path)
    assert weights.stat().st_mtime_ns == stamp
    assert data["columns"] == [
        "glyphs 5w1s", "glyphs 5w2s", f"imagefolder:{tree} 5w1s", f"imagefolder:{tree} 5w5s"
    ]  # fmt: skip
    assert set(data["rows"]) == {"Random init", "SimCLR"}
    assert data["meta"]["skipped_targets"]  # the optional target that was never built
    cell = data["rows"]["SimCLR"]["glyphs 5w1s"]
    assert cell["seeds"] == 2 and cell["episodes"] == [10, 10]
    assert (tmp_path / "cd" / "tiny" / "accuracy_per_target.png").is_file()
    # within a seed every method is scored on the same episodes: the paired test has its pairs
    assert data["comparisons"]["glyphs 5w1s"][0]["seeds"] == 2


def test_crossdomain_first_then_table1_reuses_its_models(tmp_path, profiles, monkeypatch) -> None:
    from reproduce import table1

    table1_profile, cross, tree = profiles
    run_crossdomain(cross, tree, tmp_path)
    with monkeypatch.context() as patch:
        no_training(patch)
        table1.main(["--config", str(table1_profile), "--out", str(tmp_path / "t1"), "--quiet"])
    data = json.loads((tmp_path / "t1" / "tiny" / "table1.json").read_text())
    assert data["rows"]["SimCLR"]["digits 5w1s"]["seeds"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["source=glyphs"], "source 'glyphs' is not a dataset of Table 1's tiny profile"),
        (["--datasets", "cifar10"], "target 'cifar10' is not in the profile"),
        (["--reference", "bmssl"], "the reference row 'bmssl' is not among the methods run"),
    ],
)
def test_bad_input_exits_2_before_anything_is_written(tmp_path, profiles, capsys, extra, message):
    from reproduce import crossdomain

    _, cross, _ = profiles
    with pytest.raises(SystemExit) as exit_info:
        crossdomain.main(["--config", str(cross), "--out", str(tmp_path / "cd"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cd").exists()
