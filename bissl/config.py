"""BiSSL's config, one section per pipeline stage (pretext -> head warm-up -> BiSSL -> fine-tune).

On the command line a section's fields are dotted: ``pretext.steps=300``, ``bilevel.lam=0.01``,
``cg.mode=layerwise``, ``finetune.lr=0.01``. The published versions are presets
(``bissl/presets/paper-v1.yaml``: γ = 0.01 with θ_D ← (1 − α)θ_D + αθ_P every N_a = 100
alternations; ``paper-v2.yaml``: γ = 1, no adaptation); the field defaults are paper-v1's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bissl.cg import CG_MODES, Solver, solve_cg
from bissl.hvp import HVP_BACKENDS
from bissl.objectives import UPPER_BN_MODES
from bmssl.data.views import STRENGTHS
from bmssl.errors import UserError, check_choice, check_nonnegative, check_positive
from bmssl.precision import PRECISIONS
from bmssl.simclr import SimCLRConfig


def _nonnegative(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        check_nonnegative(prefix + name, getattr(section, name))


@dataclass
class HeadWarmupConfig:
    """Stage 2 (and the start of every fine-tune): a linear head on the frozen backbone (Adam)."""

    steps: int = 100
    lr: float = 0.01

    def validate(self) -> None:
        _nonnegative(self, "warmup.", "steps")
        check_positive("warmup.lr", self.lr)


@dataclass
class BilevelConfig:
    """Stage 3: T alternations of N_L lower (LARS) and N_U upper (SGD) steps.

    Lower: NT-Xent + λ/2 ||θ_P − θ_D||²; upper: CE(head_D(backbone_P(x))) + γ·CE(model_D(x));
    every ``adapt_every`` alternations θ_D ← (1 − α) θ_D + α θ_P (0 = never).

    ``lars_exclude_1d``: the lower LARS skips trust ratio and weight decay for 1-D tensors (BN
    affine, biases), which then step with the raw lr; the public code applies LARS to every
    tensor (False). ``upper_bn``: θ_P's BatchNorm in the composite forward of the upper level
    (train: batch statistics and running statistics updated, as in the public code; frozen;
    eval; see :func:`bissl.objectives.upper_bn_mode`).
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "lower_wd": "lower_weight_decay", "upper_wd": "upper_weight_decay"
    }  # fmt: skip

    gamma: float = 0.01
    adapt_every: int = 100
    adapt_alpha: float = 0.1
    lam: float = 0.001
    lam_damp: float = 10.0
    alternations: int = 500
    lower_steps: int = 20
    upper_steps: int = 8
    lower_lr: float = 1.0
    lower_weight_decay: float = 1e-6
    lars_eta: float = 0.001
    lars_exclude_1d: bool = False
    upper_lr: float = 0.01
    upper_weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_frac: float = 0.0
    batch_size: int = 64
    lower_batch_size: int = 128
    clip: float = 10.0
    downstream_augment: str = "none"
    gather_negatives: bool = False
    upper_bn: str = "train"

    def validate(self) -> None:
        check_choice("bilevel.downstream_augment", self.downstream_augment, STRENGTHS)
        check_choice("bilevel.upper_bn", self.upper_bn, UPPER_BN_MODES)
        for name in (
            "alternations", "upper_steps", "lower_lr", "upper_lr", "lars_eta", "batch_size",
            "clip",
        ):  # fmt: skip
            check_positive(f"bilevel.{name}", getattr(self, name))
        _nonnegative(
            self, "bilevel.", "gamma", "lam", "lam_damp", "lower_weight_decay", "upper_weight_decay", "lower_steps",
            "adapt_every",
        )  # fmt: skip
        if self.lam + self.lam_damp <= 0:
            raise UserError(
                f"bilevel.lam + bilevel.lam_damp must be positive, got {self.lam} + {self.lam_damp}"
            )
        for name in ("momentum", "warmup_frac"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise UserError(f"bilevel.{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.adapt_alpha <= 1:
            raise UserError(f"bilevel.adapt_alpha must be in [0, 1], got {self.adapt_alpha!r}")
        if self.lower_batch_size < 2:
            raise UserError(
                f"bilevel.lower_batch_size must be at least 2 (contrastive pairs), got "
                f"{self.lower_batch_size}"
            )


@dataclass
class CGConfig:
    """How the damped system (I + H/(λ+λ_damp)) x = ∇_θP L_D is solved.

    ``check_residual`` spends one more Hessian-vector product per upper step to log the true
    relative residual ||v − A x|| / ||v|| (``cg_true_rel_residual``) beside the recurrence's.
    ``hvp_updates_bn``: the Hessian-vector products' train-mode forwards update θ_P's BN running
    statistics with the curvature batch, as the public code's do (once per upper step with the
    ``reuse`` backend, once per product with ``recompute``); off, they are left untouched.
    """

    iters: int = 5
    mode: str = "exact"
    rtol: float = 1e-4
    atol: float = 0.0
    warm_start: bool = False
    hvp_backend: str = "reuse"
    check_residual: bool = False
    hvp_updates_bn: bool = False

    def validate(self) -> None:
        check_choice("cg.mode", self.mode, CG_MODES)
        check_choice("cg.hvp_backend", self.hvp_backend, HVP_BACKENDS)
        _nonnegative(self, "cg.", "rtol", "atol")
        if self.iters < 1:
            raise UserError(f"cg.iters must be at least 1, got {self.iters}")

    def solver(self) -> Solver:
        """``solve(matvec, b, x0)`` with these settings (:func:`bissl.cg.solve_cg`)."""
        return solve_cg(self.mode, self.iters, self.rtol, self.atol, self.check_residual)


@dataclass
class FinetuneConfig:
    """Stage 4 (both paths): head warm-up, then backbone and head with SGD (momentum 0.9,
    cosine lr, weight decay, grad-norm clip) on the downstream train split."""

    RENAMED: ClassVar[dict[str, str]] = {"wd": "weight_decay"}

    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: str = "none"
    clip: float = 10.0
    precision: str = "fp32"  # "bf16": autocast the fine-tuning forward pass

    def validate(self) -> None:
        check_choice("finetune.augment", self.augment, STRENGTHS)
        check_choice("finetune.precision", self.precision, PRECISIONS)
        for name in ("lr", "batch_size", "clip"):
            check_positive(f"finetune.{name}", getattr(self, name))
        _nonnegative(self, "finetune.", "steps", "weight_decay")


def _pretext_defaults() -> SimCLRConfig:
    # The pretext data is one pool of every image of its source (a class tree or a flat folder
    # of unlabelled images), and BiSSL validates downstream: the SimCLR stage has no few-shot
    # validation of its own.
    return SimCLRConfig(eval_every=0, train_protocol="unlabeled")


@dataclass
class BiSSLConfig:
    """Every setting of the BiSSL pipeline; ``seed`` and ``device`` apply to every stage.

    The networks (backbone, width, BatchNorm policy, projector) and the image size are those
    of the ``pretext`` section: BiSSL's θ_D starts as a copy of the pretext backbone.
    """

    dataset: str = "digits"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: downstream training labels per class (None: the whole train split); a low-label regime
    labels_per_class: int | None = None
    pretext: SimCLRConfig = field(default_factory=_pretext_defaults)
    warmup: HeadWarmupConfig = field(default_factory=HeadWarmupConfig)
    bilevel: BilevelConfig = field(default_factory=BilevelConfig)
    cg: CGConfig = field(default_factory=CGConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baseline_matched_pretext: bool = True
    eval_every: int = 50
    eval_batch_size: int = 512
    log_every: int = 1
    init_from: str | None = None
    device: str = "auto"
    seed: int = 0

    @property
    def steps(self) -> int:
        """Trainer steps: one per alternation."""
        return self.bilevel.alternations

    @property
    def image_size(self) -> int:
        return self.pretext.image_size

    def pretext_run(self, steps: int | None = None) -> SimCLRConfig:
        """The SimCLR config of the pretext stage, with this run's seed and device."""
        return dataclasses.replace(
            self.pretext,
            seed=self.seed,
            device=self.device,
            steps=max(1, self.pretext.steps if steps is None else steps),
        )

    def validate(self) -> None:
        for section in (self.warmup, self.bilevel, self.cg, self.finetune):
            section.validate()
        check_nonnegative("pretext.steps", self.pretext.steps)  # pretext_run() clamps it to 1
        self.pretext_run().validate()
        check_positive("eval_batch_size", self.eval_batch_size)
        if self.labels_per_class is not None:
            check_positive("labels_per_class", self.labels_per_class)
        check_positive("log_every", self.log_every)
        _nonnegative(self, "", "eval_every")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"device={self.device!r} is not supported; use auto, cpu or cuda[:N]")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise UserError(
                f"init_from={self.init_from!r} does not exist; pass a pretext checkpoint written "
                "by `python -m bissl pretext` (or leave it unset)"
            )
