"""The BiSSL pipeline and its baseline, stage by stage.

BiSSL:    SimCLR pre-training -> head warm-up on the frozen backbone -> BiSSL -> fine-tune θ_P
Baseline: SimCLR pre-training -> fine-tune (the same fine-tuning: steps, lr, wd, head warm-up)

With ``baseline_matched_pretext`` the baseline's SimCLR stage runs ``pretext_steps +
alternations·lower_steps`` steps, so both paths give the backbone the same number of pretext
updates. Metrics are measured on the downstream val and test splits (percent): top-1, top-5, and
11-point mAP for multi-label sets. Stage outputs live under ``out_dir`` and are reused on rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from bissl.data import load_downstream
from bissl.downstream import finetune
from bissl.trainer import BiSSLConfig, BiSSLTrainer, simclr_config
from bmssl.baselines import SimCLRTrainer, encoder_for, load_split
from bmssl.io import atomic_write, write_json
from bmssl.nets import Encoder

__all__ = [
    "PRETEXT_FIELDS",
    "baseline_pretext_steps",
    "finetune",
    "load_splits",
    "pretext_encoder",
    "run_baseline",
    "run_bissl",
    "run_method",
]

#: the config fields that determine the pretext stage (its cache key)
PRETEXT_FIELDS = (
    "pretext_dataset", "pretext_root", "image_size", "backbone", "width", "bn", "proj_hidden",
    "proj_dim", "pretext_lr", "pretext_batch_size", "augment", "temperature", "seed",
)  # fmt: skip


def pretext_key(config: BiSSLConfig, steps: int) -> str:
    """Short hash naming a pretext run: its config fields and step count."""
    fields = {k: getattr(config, k) for k in PRETEXT_FIELDS}
    fields["steps"] = steps
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def baseline_pretext_steps(config: BiSSLConfig) -> int:
    """SimCLR steps of the baseline path (matched to BiSSL's pretext updates if configured)."""
    extra = config.alternations * config.lower_steps if config.baseline_matched_pretext else 0
    return config.pretext_steps + extra


def pretext_encoder(
    config: BiSSLConfig,
    steps: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[Encoder, Path | None]:
    """SimCLR-pre-trained encoder (bmssl.baselines.SimCLRTrainer) for ``steps`` steps.

    With ``cache_dir`` the run checkpoints under ``<cache_dir>/pretext-<key>/`` (resumable) and
    the finished encoder is stored as ``<cache_dir>/pretext-<key>.pt`` (``{"encoder": ...}``),
    which later calls load instead of training. Returns the encoder and that file.
    """
    steps = config.pretext_steps if steps is None else steps
    cfg = simclr_config(config, steps)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}.pt"
        if path.is_file():
            encoder = encoder_for(load_split(cfg, "train"), cfg)
            encoder.load_state_dict(torch.load(path, map_location="cpu")["encoder"])
            return encoder, path
    if steps == 0:
        torch.manual_seed(config.seed)
        encoder = encoder_for(load_split(cfg, "train"), cfg)
    else:
        run_dir = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}" if cache_dir else None
        trainer = SimCLRTrainer(cfg, run_dir, progress)
        trainer.fit()
        encoder = trainer.encoder
    if path is not None:
        state = {"encoder": encoder.state_dict(), "simclr": dataclasses.asdict(cfg)}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    return encoder, path


def load_splits(config: BiSSLConfig) -> dict[str, Any]:
    """The downstream train/val/test splits of ``config``."""
    return {
        split: load_downstream(
            config.dataset, config.data_root, split, config.image_size, config.dataset_options
        )
        for split in ("train", "val", "test")
    }


def run_bissl(
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """Full BiSSL path; writes ``<out_dir>/metrics.json`` and returns the metrics."""
    config.validate()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    splits = load_splits(config)
    encoder, _ = pretext_encoder(config, None, pretext_cache or out_dir, progress)
    trainer = BiSSLTrainer(config, out_dir / "bissl", progress, encoder=encoder)
    history = trainer.fit()
    extra = {f"bissl_{k}": v for k, v in history.items() if isinstance(v, float)}
    return _finetune_and_record(
        "bissl", trainer.encoder_p.backbone, config, splits, out_dir, started, progress, extra
    )


def run_baseline(
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """Baseline path (pretext -> fine-tune); writes ``<out_dir>/metrics.json``."""
    config.validate()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    splits = load_splits(config)
    steps = baseline_pretext_steps(config)
    encoder, _ = pretext_encoder(config, steps, pretext_cache or out_dir, progress)
    extra = {"pretext_steps": float(steps)}
    return _finetune_and_record(
        "baseline", encoder.backbone, config, splits, out_dir, started, progress, extra
    )


def _finetune_and_record(
    method: str,
    backbone: torch.nn.Module,
    config: BiSSLConfig,
    splits: dict[str, Any],
    out_dir: Path,
    started: float,
    progress: bool,
    extra: dict[str, float],
) -> dict[str, float]:
    """Fine-tune ``backbone`` on the downstream splits, then write and return the metrics."""
    metrics = finetune(
        backbone, config, splits["train"], splits["val"], test_set=splits["test"],
        progress=progress,
    )  # fmt: skip
    metrics.update(extra)
    metrics["wall_s"] = time.perf_counter() - started
    write_json(
        out_dir / "metrics.json",
        {"method": method, "config": dataclasses.asdict(config), "metrics": metrics},
    )
    return metrics


def run_method(
    method: str,
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """``run_bissl`` or ``run_baseline`` by name ("bissl" or "baseline")."""
    from bmssl.errors import check_choice

    check_choice("method", method, ("bissl", "baseline"))
    run = run_bissl if method == "bissl" else run_baseline
    return run(config, out_dir, progress, pretext_cache)
