"""The BiSSL pipeline end to end on tiny offline data, fine-tuning, the CLI and the table driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bissl import pipeline
from bissl.__main__ import main as bissl_main
from bissl.downstream import finetune
from bissl.trainer import BiSSLConfig

TINY = {
    "image_size": 16,
    "width": 4,
    "proj_hidden": 16,
    "proj_dim": 8,
    "pretext_steps": 3,
    "pretext_batch_size": 16,
    "alternations": 2,
    "lower_steps": 2,
    "upper_steps": 1,
    "batch_size": 16,
    "lower_batch_size": 16,
    "head_warmup_steps": 5,
    "cg_iters": 2,
    "eval_every": 2,
    "finetune_steps": 5,
    "finetune_batch_size": 16,
    "eval_batch_size": 256,
}


def tiny(**overrides) -> BiSSLConfig:
    return BiSSLConfig(**{**TINY, **overrides})


def test_bissl_and_baseline_paths_write_metrics_and_reuse_stages(tmp_path: Path) -> None:
    cfg = tiny()
    m = pipeline.run_bissl(cfg, tmp_path / "bissl", progress=False, pretext_cache=tmp_path / "pre")
    for key in ("val_acc", "val_top1", "val_top5", "test_top1", "test_top5", "bissl_val_acc"):
        assert key in m and 0.0 <= m[key] <= 100.0
    saved = json.loads((tmp_path / "bissl" / "metrics.json").read_text())
    assert saved["method"] == "bissl" and saved["metrics"]["test_top1"] == m["test_top1"]
    assert (tmp_path / "bissl" / "bissl" / "checkpoints" / "last.pt").is_file()
    b = pipeline.run_baseline(
        cfg, tmp_path / "base", progress=False, pretext_cache=tmp_path / "pre"
    )
    assert b["pretext_steps"] == cfg.pretext_steps + cfg.alternations * cfg.lower_steps
    assert len(list((tmp_path / "pre").glob("pretext-*.pt"))) == 2  # BiSSL's and the baseline's
    # a rerun loads the cached encoders and the finished BiSSL checkpoint: same numbers
    again = pipeline.run_bissl(
        cfg, tmp_path / "bissl", progress=False, pretext_cache=tmp_path / "pre"
    )
    assert again["test_top1"] == m["test_top1"]


def test_baseline_budget_can_be_unmatched() -> None:
    assert pipeline.baseline_pretext_steps(tiny(baseline_matched_pretext=False)) == 3
    assert pipeline.baseline_pretext_steps(tiny()) == 3 + 2 * 2


def test_finetune_is_seeded_takes_lr_wd_and_leaves_the_backbone(tmp_path: Path) -> None:
    cfg = tiny()
    encoder, _ = pipeline.pretext_encoder(cfg, 2, None)
    splits = pipeline.load_splits(cfg)
    before = [p.detach().clone() for p in encoder.backbone.parameters()]
    a = finetune(encoder.backbone, cfg, splits["train"], splits["val"], lr=0.05, wd=0.0)
    b = finetune(encoder.backbone, cfg, splits["train"], splits["val"], lr=0.05, wd=0.0)
    assert a == b and a["lr"] == 0.05 and a["wd"] == 0.0
    assert "test_top1" not in a and a["val_acc"] == a["val_top1"]
    for p0, p in zip(before, encoder.backbone.parameters()):
        assert torch.equal(p0, p)


def test_cli_runs_baseline_and_rejects_bad_options(tmp_path: Path, capsys) -> None:
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert (
        bissl_main(["baseline", *overrides, "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert "test_top1" in printed
    assert bissl_main(["pretext", *overrides, "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    init = json.loads(capsys.readouterr().out)["init_from"]
    assert Path(init).is_file() and "encoder" in torch.load(init, weights_only=False)
    with pytest.raises(SystemExit) as exc:
        bissl_main(["run", "cg_mode=nope", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "cg_mode" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exc:
        bissl_main(["--help"])
    assert exc.value.code == 0


# -- reproduce/bissl_table.py ----------------------------------------------------------------------


def _profile(tmp_path: Path) -> Path:
    path = tmp_path / "bissl_tiny.yaml"
    config = {k: v for k, v in TINY.items()}
    import yaml

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
    table = bissl_table.main(["--profile", str(profile), "--out", str(out), "--quiet"])
    md = (out / "tiny" / "bissl_table.md").read_text()
    assert "Baseline" in md and "BiSSL" in md and "Δ BiSSL − baseline" in md
    assert "digits top-1" in table.columns and "glyphs top-5" in table.columns
    data = json.loads((out / "tiny" / "bissl_table.json").read_text())
    cell = data["rows"]["BiSSL"]["digits top-1"]
    assert cell["n"] == 2 and len(cell["per_seed"]) == 2
    assert (out / "tiny" / "bissl_table.csv").is_file()
    assert len(list((out / "tiny" / "cells").glob("*.json"))) == 2 * 2 * 2

    def boom(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(pipeline, "run_method", boom)
    again = bissl_table.main(["--profile", str(profile), "--out", str(out), "--quiet"])
    assert again.rows == table.rows


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "nope"], "unknown profile"),
        (["--datasets", "mnist"], "not in the cpu profile"),
        (["--methods", "bissl,maml"], "unknown method"),
        (["--seeds", "0,x"], "--seeds"),
        (["--set", "lam=-1"], "lam"),
        (["--set", "colour=red"], "unknown BiSSLConfig option"),
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
    assert "mean ± std" in capsys.readouterr().out
