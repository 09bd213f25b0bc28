"""reproduce/bissl_table.py: the table end to end on tiny offline data, its cache and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bissl import pipeline
from tests.bissl.test_pipeline import TINY


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "bissl_tiny.yaml"
    config = dict(TINY)
    path.write_text(
        yaml.safe_dump(
            {
                "profile": "tiny",
                "seeds": [0, 1],
                "threads": 1,
                "config": config,
                "datasets": {
                    "digits": {},
                    "glyphs": {"dataset_options": {"num_classes": 5, "per_class": 30, "seed": 1}},
                },
            }
        )
    )
    return path


def test_table_end_to_end_then_cached(tmp_path: Path, monkeypatch) -> None:
    from reproduce import bissl_table

    profile = _profile(tmp_path)
    out = tmp_path / "out"
    table = bissl_table.main(["--config", str(profile), "--out", str(out), "--quiet"])
    md = (out / "tiny" / "bissl_table.md").read_text()
    assert "Baseline" in md and "BiSSL" in md and "Δ BiSSL − baseline (paired)" in md
    assert "digits top-1" in table.columns and "glyphs top-5" in table.columns
    data = json.loads((out / "tiny" / "bissl_table.json").read_text())
    cell = data["rows"]["BiSSL"]["digits top-1"]
    assert len(cell["per_seed"]) == 2 and "half_width" in cell
    diff = data["rows"]["Δ BiSSL − baseline (paired)"]["digits top-1"]
    assert diff["mean"] == pytest.approx(
        sum(data["rows"]["BiSSL"]["digits top-1"]["per_seed"]) / 2
        - sum(data["rows"]["Baseline (SimCLR → fine-tune)"]["digits top-1"]["per_seed"]) / 2
    )
    assert (out / "tiny" / "bissl_table.csv").is_file()
    assert len(list((out / "tiny" / "cells").glob("*.json"))) == 2 * 2 * 2

    def boom(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(pipeline, "run_method", boom)
    again = bissl_table.main(["--config", str(profile), "--out", str(out), "--quiet"])
    assert again.rows == table.rows


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "nope"], "unknown profile"),
        (["--datasets", "mnist"], "not in the cpu profile"),
        (["--methods", "bissl,maml"], "unknown method"),
        (["--seeds", "0"], "--seeds"),
        (["bilevel.lam=-1"], "lam"),
        (["colour=red"], "unknown BiSSLConfig option"),
        (["--datasets", "digits", "--data-root", "pretext"], "--data-root"),
    ],
)
def test_table_bad_input_exits_2_without_files(tmp_path: Path, capsys, argv, message) -> None:
    from reproduce import bissl_table

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        bissl_table.main([*argv, "--out", str(out), "--quiet"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_table_help(capsys) -> None:
    from reproduce import bissl_table

    with pytest.raises(SystemExit) as exc:
        bissl_table.main(["--help"])
    assert exc.value.code == 0
    assert "95% t-interval" in capsys.readouterr().out
