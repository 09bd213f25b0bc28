"""The BiSSL pipeline and its baseline, stage by stage.

BiSSL:    SimCLR pre-training -> head warm-up on the frozen backbone -> BiSSL -> fine-tune θ_P
Baseline: SimCLR pre-training -> fine-tune (the same fine-tuning: steps, lr, wd, head warm-up)

With ``baseline_matched_pretext`` the baseline's SimCLR stage runs ``pretext.steps +
alternations·lower_steps`` steps, so both paths give the backbone the same number of pretext
updates. Metrics are measured on the downstream val and test splits (percent): top-1, top-5, and
11-point mAP for multi-label sets. Stage outputs live under ``out_dir`` and are reused on rerun.

Under ``torchrun`` the SimCLR and BiSSL stages train data-parallel and rank 0 writes their files;
fine-tuning runs on rank 0 alone, while the other processes return after the BiSSL (baseline:
SimCLR) stage with the metrics they have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bissl.batches import downstream_split
from bissl.bilevel import BiSSLTrainer
from bissl.config import BiSSLConfig
from bissl.curves import plot_bissl_curves
from bissl.finetune import finetune
from bmssl import distributed
from bmssl.checkpoints import load_checkpoint, save_weights
from bmssl.errors import UserError
from bmssl.io import atomic_write, write_json
from bmssl.nets import Encoder
from bmssl.pretrain import encoder_for, load_split
from bmssl.simclr import SimCLRTrainer

__all__ = [
    "baseline_pretext_steps",
    "finetune",
    "load_splits",
    "pretext_encoder",
    "run_baseline",
    "run_bissl",
    "run_finetune",
    "run_method",
    "shared_pretext",
]

#: SimCLR options that do not change the trained encoder (left out of the pretext cache key)
_NOT_IN_KEY = (
    "eval_every", "eval_episodes", "eval_n_way", "eval_k_shot", "log_every", "device", "workers",
    "pin_memory",
)  # fmt: skip


def pretext_key(config: BiSSLConfig, steps: int) -> str:
    """Short hash naming a pretext run: its SimCLR settings (seed included) and step count."""
    fields = dataclasses.asdict(config.pretext_run(steps))
    for name in _NOT_IN_KEY:
        fields.pop(name, None)
    fields["steps"] = steps
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def baseline_pretext_steps(config: BiSSLConfig) -> int:
    """SimCLR steps of the baseline path (matched to BiSSL's pretext updates if configured)."""
    bil = config.bilevel
    extra = bil.alternations * bil.lower_steps if config.baseline_matched_pretext else 0
    return config.pretext.steps + extra


def pretext_encoder(
    config: BiSSLConfig,
    steps: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[Encoder, Path | None]:
    """SimCLR-pre-trained encoder (:class:`bmssl.simclr.SimCLRTrainer`) for ``steps`` steps.

    With ``cache_dir`` the run checkpoints under ``<cache_dir>/pretext-<key>/`` (resumable) and
    the finished encoder is stored as ``<cache_dir>/pretext-<key>.pt`` (``{"encoder": ...}``),
    which later calls load instead of training. Returns the encoder and that file (which only
    rank 0 writes).
    """
    steps = config.pretext.steps if steps is None else steps
    cfg = config.pretext_run(steps)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}.pt"
        if path.is_file():
            encoder = encoder_for(load_split(cfg, "train"), cfg)
            encoder.load_state_dict(load_checkpoint(path, restore_rng=False)["encoder"])
            return encoder, path
    if steps == 0:
        torch.manual_seed(config.seed)
        encoder = encoder_for(load_split(cfg, "train"), cfg)
    else:
        run_dir = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}" if cache_dir else None
        trainer = SimCLRTrainer(cfg, run_dir, progress)
        trainer.fit()
        encoder = trainer.encoder
    if path is not None and distributed.is_main():
        state = {"encoder": encoder.state_dict(), "simclr": dataclasses.asdict(cfg)}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    return encoder, path


def load_splits(config: BiSSLConfig) -> dict[str, Any]:
    """The downstream train/val/test splits of ``config``."""
    return {split: downstream_split(config, split) for split in ("train", "val", "test")}


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
    if not distributed.is_main():
        return extra
    plot_bissl_curves(out_dir / "bissl" / "metrics.csv", out_dir / "bissl" / "curves.png")
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
    if not distributed.is_main():
        return extra
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
    """Fine-tune ``backbone`` on the downstream splits, then write the fine-tuned network
    (``finetuned.pt``, a plain state_dict of backbone ``0.*`` and head ``1.*``) and the
    metrics (``metrics.json``); returns the metrics."""
    kept: dict[str, torch.nn.Module] = {}
    metrics = finetune(
        backbone, config, splits["train"], splits["val"], test_set=splits["test"],
        progress=progress, keep=kept,
    )  # fmt: skip
    metrics.update(extra)
    metrics["wall_s"] = time.perf_counter() - started
    save_weights(out_dir / "finetuned.pt", kept["model"].state_dict())
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


def shared_pretext(base: BiSSLConfig, directory: Path) -> dict[str, Any]:
    """Overrides for a search's base config: ``init_from`` = one SimCLR pretext encoder that
    every trial starts from (the paper's searches share one pre-trained encoder too).

    Nothing to do when ``init_from`` is set. The file is cached under ``directory`` (keyed by
    the pretext settings), so a resumed search does not pre-train again.
    """
    if base.init_from is not None:
        return {}
    print(
        f"bissl: SimCLR pretext stage ({base.pretext.steps} steps), shared by every trial",
        file=sys.stderr,
    )
    _, path = pretext_encoder(base, None, cache_dir=directory, progress=False)
    assert path is not None
    return {"init_from": str(path)}


def load_backbone(config: BiSSLConfig) -> torch.nn.Module:
    """The backbone stored in ``config.init_from``: a pretext file (``{"encoder": ...}``, the
    baseline path's backbone) or a BiSSL trainer checkpoint (its lower backbone θ_P)."""
    if config.init_from is None:
        raise UserError(
            "fine-tuning needs a trained backbone: set init_from to a file written by "
            "`python -m bissl pretext` or to a BiSSL run's checkpoints/last.pt"
        )
    state = load_checkpoint(config.init_from, restore_rng=False)
    if "encoder" in state:
        weights = state["encoder"]
    elif isinstance(state.get("trainer"), dict) and "encoder_p" in state["trainer"]:
        weights = state["trainer"]["encoder_p"]
    else:
        raise UserError(
            f"init_from={config.init_from!r} holds neither pretext weights ('encoder') nor a "
            "BiSSL checkpoint ('trainer' -> 'encoder_p')"
        )
    cfg = config.pretext_run()
    encoder = encoder_for(load_split(cfg, "train"), cfg)
    encoder.load_state_dict(weights)
    return encoder.backbone


FINETUNE_RESULT = "finetune.json"


def run_finetune(
    config: BiSSLConfig,
    out_dir: Path,
    on_eval: Callable[[int, dict[str, float], Path | None], None],
) -> tuple[dict[str, float], int, Path | None]:
    """A fine-tuning trial: fine-tune ``load_backbone(config)`` once and report the metrics
    (or return those a restored trial directory holds). ``(metrics, step, checkpoint)``, like a
    trainer run; the metrics file is the trial's checkpoint, so a finished trial never reruns."""
    path = out_dir / "checkpoints" / FINETUNE_RESULT
    steps = config.finetune.steps
    if path.is_file():
        return json.loads(path.read_text()), steps, path
    splits = load_splits(config)
    metrics = finetune(load_backbone(config), config, splits["train"], splits["val"])
    metrics["step"] = float(steps)
    write_json(path, metrics)
    on_eval(steps, metrics, path)
    return metrics, steps, path
