"""The BiSSL pipeline and its baseline: one path whose middle differs.

BiSSL:    data -> SimCLR pre-training -> head warm-up -> BiSSL alternations -> fine-tune θ_P
Baseline: data -> SimCLR pre-training -> fine-tune (the same fine-tuning: steps, lr, wd, warm-up)

:func:`run_method` loads the data once (:class:`bissl.stages.BiSSLData`), runs the path's middle
(:data:`PATHS`) and fine-tunes the backbone it returns. With ``baseline_matched_pretext`` the
baseline's SimCLR stage runs ``pretext.steps + alternations·lower_steps`` steps, so both paths
give the backbone the same number of pretext updates. Metrics are measured on the downstream val
and test splits (percent): top-1, top-5, and 11-point mAP for multi-label sets. Stage outputs
live under ``out_dir`` and are reused on rerun.

Under ``torchrun`` the SimCLR and BiSSL stages train data-parallel and rank 0 writes their files;
fine-tuning runs on rank 0 alone, while the other processes return after the BiSSL (baseline:
SimCLR) stage with the metrics they have.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bissl.bilevel import BiSSLTrainer
from bissl.budget import baseline_pretext_steps, path_views
from bissl.config import BiSSLConfig
from bissl.curves import plot_bissl_curves
from bissl.downstream import downstream_split
from bissl.finetune import finetune, finetune_model, split_metrics
from bissl.stages import BiSSLData, load_backbone, pretext_encoder
from bmssl import distributed
from bmssl.checkpoints import save_weights
from bmssl.errors import check_choice
from bmssl.io import write_json

__all__ = [
    "PATHS",
    "finetune_lower_backbone",
    "pretext_encoder",  # the SimCLR stage (bissl.stages), for `python -m bissl pretext`
    "run_baseline",
    "run_bissl",
    "run_finetune",
    "run_method",
    "shared_pretext",
]

#: what a path's middle returns: the backbone to fine-tune and metrics of its own
Middle = Callable[[BiSSLConfig, BiSSLData, Path, Path, bool], tuple[nn.Module, dict[str, float]]]


def _bissl_middle(
    config: BiSSLConfig, data: BiSSLData, out_dir: Path, cache: Path, progress: bool
) -> tuple[nn.Module, dict[str, float]]:
    """SimCLR pretext -> head warm-up -> alternations (in ``out_dir/bissl``); θ_P."""
    encoder, _ = pretext_encoder(config, None, cache, progress, data.pretext)
    trainer = BiSSLTrainer.start(config, data, encoder, out_dir / "bissl", progress)
    history = trainer.fit()
    if distributed.is_main():
        plot_bissl_curves(out_dir / "bissl" / "metrics.csv", out_dir / "bissl" / "curves.png")
    return trainer.backbone(), {f"bissl_{k}": v for k, v in history.items() if isinstance(v, float)}


def _baseline_middle(
    config: BiSSLConfig, data: BiSSLData, out_dir: Path, cache: Path, progress: bool
) -> tuple[nn.Module, dict[str, float]]:
    """SimCLR pretext for :func:`bissl.budget.baseline_pretext_steps`; its backbone."""
    steps = baseline_pretext_steps(config)
    encoder, _ = pretext_encoder(config, steps, cache, progress, data.pretext)
    return encoder.backbone, {"pretext_steps": float(steps)}


#: the two rows of the BiSSL table, by name: each path's middle stages
PATHS: dict[str, Middle] = {"baseline": _baseline_middle, "bissl": _bissl_middle}


def run_method(
    method: str,
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """The path ``method`` (a key of :data:`PATHS`) on ``config``: writes the fine-tuned network
    (``finetuned.pt``, a plain state_dict of backbone ``0.*`` and head ``1.*``) and
    ``metrics.json`` into ``out_dir``, and returns the metrics. The SimCLR stage is cached in
    ``pretext_cache`` (default ``out_dir``), so paths and seeds that share it train it once."""
    check_choice("method", method, tuple(PATHS))
    config.validate()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    data = BiSSLData.load(config)
    cache = Path(pretext_cache) if pretext_cache is not None else out_dir
    backbone, extra = PATHS[method](config, data, out_dir, cache, progress)
    if not distributed.is_main():
        return extra
    net, metrics = finetune_model(backbone, config, data.train, progress=progress)
    metrics.update(split_metrics(net, config, data.val, data.test))
    metrics.update(extra)
    metrics["views_seen"] = float(path_views(config, method)["total"])
    metrics["wall_s"] = time.perf_counter() - started
    save_weights(out_dir / "finetuned.pt", net.state_dict())
    write_json(
        out_dir / "metrics.json",
        {"method": method, "config": dataclasses.asdict(config), "metrics": metrics},
    )
    return metrics


def run_bissl(
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """``run_method("bissl", ...)``: the full BiSSL path."""
    return run_method("bissl", config, out_dir, progress, pretext_cache)


def run_baseline(
    config: BiSSLConfig,
    out_dir: str | Path,
    progress: bool = True,
    pretext_cache: str | Path | None = None,
) -> dict[str, float]:
    """``run_method("baseline", ...)``: pretext -> fine-tune."""
    return run_method("baseline", config, out_dir, progress, pretext_cache)


# -- the stages a search runs (registered in bissl.methods, used by tuning) --------------------


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


def finetune_lower_backbone(trainer: BiSSLTrainer) -> dict[str, float]:
    """The final stage of a BiSSL search trial (``Space.finish``): fine-tune θ_P
    (``trainer.backbone()``) on the downstream train split with the config's fine-tuning budget;
    metrics on the val split, ``val_acc`` the headline (top-1, or mAP for multi-label sets)."""
    data = trainer.data
    return finetune(trainer.backbone(), trainer.config, data.train, data.val)


FINETUNE_RESULT = "finetune.json"


def run_finetune(
    config: BiSSLConfig,
    out_dir: Path,
    on_eval: Callable[[int, dict[str, float], Path | None], None],
) -> tuple[dict[str, float], int, Path | None]:
    """A fine-tuning trial (the ``bissl-finetune`` method's runner): fine-tune the backbone in
    ``init_from`` once and report the metrics (or return those a restored trial directory
    holds). ``(metrics, step, checkpoint)``, like a trainer run; the metrics file is the trial's
    checkpoint, so a finished trial never reruns."""
    path = out_dir / "checkpoints" / FINETUNE_RESULT
    steps = config.finetune.steps
    if path.is_file():
        return json.loads(path.read_text()), steps, path
    train, val = downstream_split(config, "train"), downstream_split(config, "val")
    metrics = finetune(load_backbone(config), config, train, val)
    metrics["step"] = float(steps)
    write_json(path, metrics)
    on_eval(steps, metrics, path)
    return metrics, steps, path
