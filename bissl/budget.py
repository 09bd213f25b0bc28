"""The training budget of each BiSSL path, in image-views through a backbone.

One image-view is one image (one augmented view of it) forwarded through a backbone while it
trains or is trained on; the backward pass of that forward is not counted again. Evaluation
forwards (validation, test) and the fine-tuning stage, which both paths run identically, are not
counted. Per path:

- SimCLR pretext: ``steps · batch_size · 2`` (two views of each image);
- BiSSL, beyond its pretext:
  - head warm-up on the frozen backbone: ``warmup.steps · bilevel.batch_size``;
  - each of ``T`` alternations: ``N_L · lower_batch_size · 2`` lower views, and per upper step
    ``bilevel.batch_size`` through θ_P (the composite term), ``bilevel.batch_size`` through θ_D
    when γ > 0 (the classic term) and ``2 · lower_batch_size`` pretext views for the Hessian's
    graph (once with the ``reuse`` HVP backend, once per CG iteration with ``recompute``).

The baseline (``baseline_matched_pretext``) runs as many extra SimCLR steps as make its pretext
views reach BiSSL's total (rounded up), so both paths train on at least the same image-views.
"""

from __future__ import annotations

import math

from bissl.config import BiSSLConfig


def pretext_views(config: BiSSLConfig, steps: int) -> int:
    """Image-views of ``steps`` SimCLR steps of the config's pretext stage."""
    return int(steps) * config.pretext.batch_size * 2


def bissl_extra_views(config: BiSSLConfig) -> dict[str, int]:
    """BiSSL's image-views beyond its pretext stage, by part (see the module docstring)."""
    bil, cg = config.bilevel, config.cg
    hessian_forwards = 1 if cg.hvp_backend == "reuse" else cg.iters
    upper = (
        bil.batch_size * (2 if bil.gamma > 0 else 1) + 2 * bil.lower_batch_size * hessian_forwards
    )
    return {
        "warmup": config.warmup.steps * bil.batch_size,
        "lower": bil.alternations * bil.lower_steps * bil.lower_batch_size * 2,
        "upper": bil.alternations * bil.upper_steps * upper,
    }


def path_views(config: BiSSLConfig, path: str) -> dict[str, int]:
    """The image-views of a path (``"bissl"`` or ``"baseline"``) by part, with their ``total``."""
    if path == "bissl":
        parts = {
            "pretext": pretext_views(config, config.pretext.steps),
            **bissl_extra_views(config),
        }
    else:
        parts = {"pretext": pretext_views(config, baseline_pretext_steps(config))}
    return {**parts, "total": sum(parts.values())}


def baseline_pretext_steps(config: BiSSLConfig) -> int:
    """SimCLR steps of the baseline path: BiSSL's pretext steps, plus (with
    ``baseline_matched_pretext``) as many as cover BiSSL's extra image-views."""
    if not config.baseline_matched_pretext:
        return config.pretext.steps
    extra = sum(bissl_extra_views(config).values())
    return config.pretext.steps + math.ceil(extra / (config.pretext.batch_size * 2))
