"""The paper-smoke profiles: derived from the paper profiles with budgets only, and both smoke
commands run end to end on the synthetic copies they build (what CI checks of the paper paths)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bissl.budget import baseline_pretext_steps
from bissl.config import BiSSLConfig
from bmssl.config import config_from_dict
from reproduce.profiles import BiSSLTableProfile, Table1Profile, load_profile, profile_mapping

ROOT = Path(__file__).resolve().parents[2]

# What a smoke profile may change of a method's config: budgets, never a network, a data
# layout, an image size or an algorithm setting.
TABLE1_BUDGET = {
    "steps", "eval_every", "eval_episodes", "log_every", "batch_size", "n_way", "task_images", "n_query",
    "meta_batch", "data_root",
}  # fmt: skip
BISSL_BUDGET = {
    "pretext.steps", "pretext.batch_size", "pretext.log_every", "pretext.data_root",
    "pretext.dataset", "warmup.steps", "bilevel.alternations", "bilevel.lower_steps",
    "bilevel.upper_steps", "bilevel.adapt_every", "bilevel.batch_size",
    "bilevel.lower_batch_size", "cg.iters", "finetune.steps", "finetune.batch_size",
    "eval_every", "data_root",
}  # fmt: skip


def flat(config: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in dataclasses.asdict(config).items():  # type: ignore[call-overload]
        if isinstance(value, dict) and key in ("pretext", "warmup", "bilevel", "cg", "finetune"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[prefix + key] = value
    return out


def differing(a: object, b: object) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa if fa[k] != fb[k]}


def test_table1_smoke_is_the_paper_profile_with_budgets_only() -> None:
    from reproduce.table1 import method_config

    paper = load_profile(Table1Profile, "table1", "paper")
    smoke = load_profile(Table1Profile, "table1", "paper-smoke")
    assert smoke.methods == paper.methods and smoke.reference == paper.reference
    assert smoke.datasets == paper.datasets and smoke.model == paper.model
    assert (smoke.preset, smoke.classifier) == (paper.preset, paper.classifier)
    assert smoke.synthetic_data and not paper.synthetic_data
    for dataset in paper.datasets:
        for method in paper.methods:
            a = method_config(paper, method, dataset, None, 0)
            b = method_config(smoke, method, dataset, None, 0)
            assert differing(a, b) <= TABLE1_BUDGET, (method, dataset)
            assert (b.backbone, b.width, b.image_size) == (a.backbone, a.width, a.image_size)


def test_bissl_smoke_is_the_paper_profile_with_budgets_only() -> None:
    from reproduce.bissl_table import BiSSLTablePlan, cell_config

    paper = load_profile(BiSSLTableProfile, "bissl", "paper")
    smoke = load_profile(BiSSLTableProfile, "bissl", "paper-smoke")
    assert smoke.datasets == paper.datasets and len(paper.datasets) == 14
    assert (smoke.methods, smoke.metrics, smoke.preset) == (paper.methods, paper.metrics, "paper")
    for dataset in paper.datasets:
        a = cell_config(BiSSLTablePlan(paper, Path(), [], [], {}, []), dataset, 0)
        b = cell_config(BiSSLTablePlan(smoke, Path(), [], [], {}, []), dataset, 0)
        assert differing(a, b) <= BISSL_BUDGET, dataset
        assert (b.pretext.backbone, b.image_size) == ("resnet18", 96)


def test_a_derived_profile_follows_its_parent(tmp_path: Path) -> None:
    parent = tmp_path / "table1_base.yaml"
    child = tmp_path / "table1_child.yaml"
    parent.write_text(
        "profile: base\nmethods: [random, simclr]\nmodel: {backbone: conv4, width: 64}\n"
        "datasets: {digits: {image_size: 28, cells: [5w1s]}}\n"
        "method_overrides: {simclr: {steps: 300, lr: 0.01}}\n"
    )
    child.write_text(
        "derives: table1_base.yaml\nprofile: child\nmethod_overrides: {simclr: {steps: 2}}\n"
    )
    loaded = load_profile(Table1Profile, "table1", str(child), ["episodes=7"])
    assert loaded.method_overrides == {"simclr": {"steps": 2, "lr": 0.01}}
    assert (loaded.profile, loaded.episodes, loaded.model["width"]) == ("child", 7, 64)
    # An edit of the parent is seen by the child.
    parent.write_text(parent.read_text().replace("width: 64", "width: 96"))
    assert profile_mapping("table1", str(child))["model"] == {"backbone": "conv4", "width": 96}
    child.write_text("derives: table1_child.yaml\n")
    from bmssl.errors import UserError

    with pytest.raises(UserError, match="derives from itself"):
        load_profile(Table1Profile, "table1", str(child))


def test_one_embedding_per_job_scores_as_per_cell_evaluation() -> None:
    """run_job embeds the test split once for all cells: the same accuracies as embedding it
    in every evaluate_fewshot call."""
    from bmssl.data import get_dataset
    from bmssl.evaluate import evaluate_fewshot
    from bmssl.nets import build_encoder
    from reproduce.table1 import embedded_split

    test = get_dataset("digits", split="test", image_size=28)
    backbone = build_encoder("conv4", 1, 28, width=8, bn="track", proj_hidden=8, proj_dim=8)
    backbone = backbone.backbone.train()
    embedded = embedded_split(backbone, test)
    assert backbone.training  # restored
    for classifier in ("proto", "logreg"):
        for n_way, k_shot in ((5, 1), (5, 5)):
            direct = evaluate_fewshot(backbone, test, n_way, k_shot, 5, 6, classifier, seed=3)
            shared = evaluate_fewshot(
                torch.nn.Identity(), embedded, n_way, k_shot, 5, 6, classifier, seed=3
            )
            assert np.array_equal(direct.accuracies, shared.accuracies)


def run_smoke(
    script: str, out: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "reproduce" / script), "--profile", "paper-smoke", "--out",
         str(out), "--quiet", *extra],
        cwd=out.parent, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, time.perf_counter() - started


def finite_cells(row: dict[str, dict[str, float]], columns: list[str]) -> None:
    for column in columns:
        assert math.isfinite(row[column]["mean"]), column
        assert 0.0 <= row[column]["mean"] <= 100.0, column


def test_table1_paper_smoke_runs_every_row_and_column(tmp_path: Path) -> None:
    from bmssl.methods import get_method

    out = tmp_path / "results"
    done, seconds = run_smoke("table1.py", out)
    paper = load_profile(Table1Profile, "table1", "paper")
    base = out / "paper-smoke"
    data = json.loads((base / "table1.json").read_text())
    columns = [f"{d} {n}w{k}s" for d in paper.datasets for n, k in paper.cells(d)]
    assert data["columns"] == columns and len(columns) == 8
    for method in paper.methods:
        label = get_method(method).label
        assert label in done.stdout
        finite_cells(data["rows"][label], columns)
    # The synthetic copies are in the real layouts, and the paper networks read them.
    data_dir = base / "smoke-data"
    (omniglot,) = data_dir.glob("omniglot-*")
    assert (omniglot / "omniglot-py" / "images_background").is_dir()
    assert len(list((omniglot / "omniglot-py" / "images_evaluation").glob("*/*"))) == 659
    (mini,) = data_dir.glob("miniimagenet-*")
    assert (mini / "test.csv").read_text().startswith("filename,label\n")
    for method in ("simclr", "protonet", "bmssl", "meta-ssl", "bmssl-fo"):
        for dataset, size in (("omniglot", 28), ("miniimagenet", 84)):
            run = base / "runs" / method / dataset / "seed0"
            # keep_checkpoints: false: the weights went once the cell was stored, records and
            # the exported backbone (which the cross-domain table reuses) stay.
            assert (run / "metrics.csv").is_file(), run
            assert [p.name for p in run.rglob("*.pt")] == ["backbone.pt"], run
            config = json.loads((base / "cells" / f"{method}__{dataset}__seed0.json").read_text())[
                "config"
            ]
            assert (config["backbone"], config["width"], config["image_size"]) == (
                "conv4", 64, size)  # fmt: skip
            assert config["steps"] == 2 and config["dataset"] == dataset
            assert config["data_root"].startswith(str(data_dir))
    print(f"table1 paper-smoke: {seconds:.0f} s")
    crossdomain_smoke_reuses_the_models(out, base)


def crossdomain_smoke_reuses_the_models(table1_out: Path, table1_base: Path) -> None:
    """The cross-domain paper-smoke profile: every target and cell of the paper profile, read
    from tiny copies in each target's real layout, scoring Table 1's paper-smoke models without
    training any of them again."""
    from reproduce.profiles import CrossDomainProfile, parse_cells

    stamps = {p: p.stat().st_mtime_ns for p in (table1_base / "runs").rglob("backbone.pt")}
    assert len(stamps) == 10  # five trained methods × Omniglot and miniImageNet
    out = table1_out.parent / "crossdomain"
    done, seconds = run_smoke("crossdomain.py", out, "--models", str(table1_out))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    paper = load_profile(CrossDomainProfile, "crossdomain", "paper")
    data = json.loads((out / "paper-smoke" / "crossdomain.json").read_text())
    columns = [
        f"{t} {n}w{k}s" for t, o in paper.targets.items() for n, k in parse_cells(o["cells"], t)
    ]
    assert data["columns"] == columns and len(columns) == 20
    for label in data["rows"]:
        finite_cells(data["rows"][label], columns)
    layouts = {
        "eurosat": "2750", "cropdiseases": "dataset/train", "isic2018":
        "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
        "chestx": "Data_Entry_2017.csv", "cub-fs": "CUB_200_2011/images",
        "cars-fs": "devkit/cars_train_annos.mat", "places": "places365_standard/train",
        "plantae": "Plantae",
    }  # fmt: skip
    for target, inner in layouts.items():
        (root,) = (out / "paper-smoke" / "smoke-data").glob(f"{target}-*")
        assert (root / inner).exists(), target
    print(f"crossdomain paper-smoke (models reused): {seconds:.0f} s")


def test_bissl_paper_smoke_runs_every_dataset_and_stage(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done, seconds = run_smoke("bissl_table.py", out)
    paper = load_profile(BiSSLTableProfile, "bissl", "paper")
    base = out / "paper-smoke"
    data = json.loads((base / "bissl_table.json").read_text())
    columns = [
        f"{d} {'mAP(11pt)' if (d == 'voc2007' and m == 'top1') else m.replace('top', 'top-')}"
        for d in paper.datasets
        for m in paper.metrics
    ]
    assert data["columns"] == columns and len(columns) == 28
    for label in ("Baseline (SimCLR → fine-tune)", "BiSSL"):
        finite_cells(data["rows"][label], columns)
    assert "Δ BiSSL − baseline (paired)" in done.stdout
    for dataset in paper.datasets:
        bissl = json.loads(
            (base / "runs" / dataset / "bissl" / "seed0" / "metrics.json").read_text()
        )
        baseline = base / "runs" / dataset / "baseline" / "seed0" / "metrics.json"
        pretext = bissl["config"]["pretext"]
        assert (pretext["backbone"], pretext["image_size"]) == ("resnet18", 96)
        assert pretext["dataset"].startswith("imagefolder:") and "smoke-data" in pretext["dataset"]
        assert bissl["config"]["cg"]["mode"] == "layerwise"
        # Every stage ran: the bilevel stage logged its alternations, both paths fine-tuned.
        assert (base / "runs" / dataset / "bissl" / "seed0" / "bissl" / "curves.png").is_file()
        # keep_checkpoints: false: each cell's weights went once it was stored.
        assert not list((base / "runs" / dataset).rglob("*.pt")), dataset
        # the baseline trains on BiSSL's image-views (bissl/budget.py), in SimCLR steps
        config = config_from_dict(BiSSLConfig, bissl["config"])
        assert json.loads(baseline.read_text())["metrics"]["pretext_steps"] == (
            baseline_pretext_steps(config)
        )
    assert len(list((base / "pretext").glob("pretext-*.pt"))) == 2  # BiSSL's and the baseline's
    # 14 sets of ResNet-18 checkpoints took 8 GB before best.pt became a link and cells pruned.
    inodes = {f.stat().st_ino: f.stat().st_size for f in base.rglob("*") if f.is_file()}
    assert sum(inodes.values()) < 600e6
    print(f"bissl paper-smoke: {seconds:.0f} s")
