"""The BiSSL pipeline end to end on tiny offline data, fine-tuning and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bissl import budget, pipeline, stages
from bissl.__main__ import main as bissl_main
from bissl.config import BiSSLConfig
from bissl.finetune import finetune
from bmssl.config import config_from_dict

TINY = {
    "pretext.image_size": 16,
    "pretext.width": 4,
    "pretext.proj_hidden": 16,
    "pretext.proj_dim": 8,
    "pretext.steps": 3,
    "pretext.batch_size": 16,
    "bilevel.alternations": 2,
    "bilevel.lower_steps": 2,
    "bilevel.upper_steps": 1,
    "bilevel.batch_size": 16,
    "bilevel.lower_batch_size": 16,
    "warmup.steps": 5,
    "cg.iters": 2,
    "eval_every": 2,
    "finetune.steps": 5,
    "finetune.batch_size": 16,
    "eval_batch_size": 256,
}


def tiny(overrides: dict | None = None) -> BiSSLConfig:
    return config_from_dict(BiSSLConfig, {**TINY, **(overrides or {})})


def test_bissl_and_baseline_paths_write_metrics_and_reuse_stages(tmp_path: Path) -> None:
    cfg = tiny()
    m = pipeline.run_bissl(cfg, tmp_path / "bissl", progress=False, pretext_cache=tmp_path / "pre")
    for key in ("val_acc", "val_top1", "val_top5", "test_top1", "test_top5", "bissl_val_acc"):
        assert key in m and 0.0 <= m[key] <= 100.0
    saved = json.loads((tmp_path / "bissl" / "metrics.json").read_text())
    assert saved["method"] == "bissl" and saved["metrics"]["test_top1"] == m["test_top1"]
    assert (tmp_path / "bissl" / "bissl" / "checkpoints" / "last.pt").is_file()
    from bissl.curves import read_rows

    rows = read_rows(tmp_path / "bissl" / "bissl" / "metrics.csv")
    assert [r["step"] for r in rows] == [1.0, 2.0]  # one row per alternation
    assert {"pretext_loss", "upper_loss", "cg_rel_residual", "val_acc", "val_acc_d"} <= set(rows[1])
    png = (tmp_path / "bissl" / "bissl" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    b = pipeline.run_baseline(
        cfg, tmp_path / "base", progress=False, pretext_cache=tmp_path / "pre"
    )
    assert b["pretext_steps"] == budget.baseline_pretext_steps(cfg) > cfg.pretext.steps
    assert b["views_seen"] >= m["views_seen"] > b["views_seen"] - 2 * cfg.pretext.batch_size
    assert len(list((tmp_path / "pre").glob("pretext-*.pt"))) == 2  # BiSSL's and the baseline's
    # a rerun loads the cached encoders and the finished BiSSL checkpoint: same numbers
    again = pipeline.run_bissl(
        cfg, tmp_path / "bissl", progress=False, pretext_cache=tmp_path / "pre"
    )
    assert again["test_top1"] == m["test_top1"]


def test_baseline_budget_matches_bisssl_image_views() -> None:
    assert budget.baseline_pretext_steps(tiny({"baseline_matched_pretext": False})) == 3
    cfg = tiny()  # pretext batch 16; warm-up 5 steps, 2 alternations of 2 lower + 1 upper step
    bil = cfg.bilevel
    extra = {
        "warmup": cfg.warmup.steps * bil.batch_size,
        "lower": 2 * 2 * bil.lower_batch_size * 2,
        "upper": 2 * 1 * (bil.batch_size * (2 if bil.gamma > 0 else 1) + 2 * bil.lower_batch_size),
    }
    assert budget.bissl_extra_views(cfg) == extra
    steps = budget.baseline_pretext_steps(cfg)
    assert steps == 3 + -(-sum(extra.values()) // 32)  # ceil(extra / (16 images × 2 views))
    bissl, baseline = budget.path_views(cfg, "bissl"), budget.path_views(cfg, "baseline")
    assert baseline["total"] - 32 < bissl["total"] <= baseline["total"]
    recompute = tiny({"cg.hvp_backend": "recompute", "cg.iters": 3})
    assert budget.bissl_extra_views(recompute)["upper"] == 2 * (
        bil.batch_size * (2 if bil.gamma > 0 else 1) + 3 * 2 * bil.lower_batch_size
    )


def test_finetune_is_seeded_takes_lr_wd_and_leaves_the_backbone(tmp_path: Path) -> None:
    cfg = tiny()
    encoder, _ = stages.pretext_encoder(cfg, 2, None)
    data = stages.BiSSLData.load(cfg, test=False)
    before = [p.detach().clone() for p in encoder.backbone.parameters()]
    a = finetune(encoder.backbone, cfg, data.train, data.val, lr=0.05, weight_decay=0.0)
    b = finetune(encoder.backbone, cfg, data.train, data.val, lr=0.05, weight_decay=0.0)
    assert a == b and a["lr"] == 0.05 and a["weight_decay"] == 0.0
    assert "test_top1" not in a and a["val_acc"] == a["val_top1"]
    for p0, p in zip(before, encoder.backbone.parameters()):
        assert torch.equal(p0, p)


def test_cli_runs_baseline_and_rejects_bad_options(tmp_path: Path, capsys) -> None:
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert bissl_main(["baseline", *overrides, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "test_top1" in printed
    assert bissl_main(["pretext", *overrides, "--out", str(tmp_path / "p"), "--quiet"]) == 0
    init = json.loads(capsys.readouterr().out)["init_from"]
    assert Path(init).is_file() and "encoder" in torch.load(init, weights_only=True)
    assert (tmp_path / "cli" / "finetuned.pt").is_file()  # the fine-tuned network is kept
    weights = torch.load(tmp_path / "cli" / "finetuned.pt", weights_only=True)
    assert any(k.startswith("1.") for k in weights)  # the head beside the backbone
    with pytest.raises(SystemExit) as exc:
        bissl_main(["run", "cg.mode=nope", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "cg.mode" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exc:
        bissl_main(["--help"])
    assert exc.value.code == 0


def test_bf16_lower_level_and_finetune_run() -> None:
    """pretext.precision and finetune.precision = bf16 autocast the first-order stages; the
    upper step's Hessian-vector products stay float32 (its CG residual is still computed)."""
    from bissl.bilevel import BiSSLTrainer

    cfg = tiny({"pretext.precision": "bf16", "finetune.precision": "bf16"})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    logs = trainer.train_step(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    data = trainer.data
    metrics = finetune(trainer.encoder_p.backbone, cfg, data.train, data.val, steps=2)
    assert 0.0 <= metrics["val_acc"] <= 100.0


def test_trainer_is_built_from_what_the_pipeline_holds(monkeypatch) -> None:
    """BiSSLTrainer.start loads nothing: it takes the pipeline's data and encoder; φ_D is
    warmed up on the frozen θ_D unless its weights are given; both paths share run_method."""
    from bissl.bilevel import BiSSLTrainer

    cfg = tiny()
    data = stages.BiSSLData.load(cfg)
    encoder, _ = stages.pretext_encoder(cfg, 2, None, pretext=data.pretext)

    def no_loading(*args, **kwargs):
        raise AssertionError("the trainer loaded data the pipeline already holds")

    monkeypatch.setattr(stages, "downstream_split", no_loading)
    monkeypatch.setattr(stages, "load_split", no_loading)
    fresh = BiSSLTrainer(cfg, progress=False, data=data, encoder=encoder)
    warmed = BiSSLTrainer.start(cfg, data, encoder, progress=False)
    given = {k: v + 1 for k, v in fresh.model_d.head.state_dict().items()}
    kept = BiSSLTrainer.start(cfg, data, encoder, progress=False, head=given)
    for name, p in warmed.model_d.head.state_dict().items():
        assert not torch.equal(p, fresh.model_d.head.state_dict()[name])  # the warm-up stage ran
        assert torch.equal(kept.model_d.head.state_dict()[name], given[name])  # no warm-up
    for a, b in zip(warmed.encoder_p.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert set(pipeline.PATHS) == {"baseline", "bissl"}
    with pytest.raises(TypeError, match="data"):
        BiSSLTrainer(cfg, progress=False)  # type: ignore[call-arg]


def test_init_from_stands_in_for_the_pretext_stage(tmp_path: Path) -> None:
    """A search's shared pretext file seeds the trainer (θ_P = θ_D = its backbone) and a
    fine-tuning trial; a BiSSL checkpoint gives its θ_P; other files are refused by name."""
    from bissl.bilevel import BiSSLTrainer
    from bmssl.errors import UserError

    cfg = tiny()
    overrides = pipeline.shared_pretext(cfg, tmp_path / "shared")
    init = config_from_dict(BiSSLConfig, overrides, base=cfg)
    stored = torch.load(overrides["init_from"], weights_only=True)["encoder"]
    trainer = BiSSLTrainer.from_config(init, tmp_path / "run", progress=False)
    for name, value in trainer.encoder_p.state_dict().items():
        assert torch.equal(value, stored[name])
    trainer.fit()
    from_run = config_from_dict(
        BiSSLConfig, {"init_from": str(tmp_path / "run" / "checkpoints" / "last.pt")}, base=cfg
    )
    for a, b in zip(stages.load_backbone(from_run).parameters(), trainer.backbone().parameters()):
        assert torch.equal(a, b)
    seen = []
    metrics, step, path = pipeline.run_finetune(
        from_run, tmp_path / "trial", lambda *a: seen.append(a)
    )
    assert step == cfg.finetune.steps and path is not None and path.is_file() and len(seen) == 1
    assert 0.0 <= metrics["val_acc"] <= 100.0
    torch.save({"other": 1}, tmp_path / "bad.pt")
    bad = config_from_dict(BiSSLConfig, {"init_from": str(tmp_path / "bad.pt")}, base=cfg)
    with pytest.raises(UserError, match="neither pretext weights"):
        stages.load_backbone(bad)
