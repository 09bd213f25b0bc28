"""BiSSL's two objectives (arXiv 2410.02387, as specified in docs/design.md).

Lower level (pretext), over backbone θ_P and projector φ_P:
    L_P = NT-Xent(θ_P, φ_P) + λ/2 · Σ ||θ_P − stopgrad(θ_D)||²      (backbone parameters only)
Upper level (downstream), over backbone θ_D and linear head φ_D:
    L_U = CE(head_D(backbone_P(x)), y) + γ · CE(head_D(backbone_D(x)), y)
θ_P enters L_U only through θ_P*(θ_D); its gradient is turned into one for θ_D by
:mod:`bissl.hypergrad`. Multi-label targets (float multi-hot ``[B, C]``) use BCE-with-logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bmssl.losses import nt_xent
from bmssl.nets import Encoder

Tensors = tuple[torch.Tensor, ...]


class DownstreamModel(nn.Module):
    """``head(backbone(x))``: backbone ``[B, C, H, W] -> [B, F]``, linear head ``[B, F] -> [B, K]``."""

    def __init__(self, backbone: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        out_dim: int = backbone.out_dim  # type: ignore[assignment]
        self.head = nn.Linear(int(out_dim), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def is_multilabel_target(y: torch.Tensor) -> bool:
    """Multi-hot float targets ``[B, C]`` (multi-label) versus integer class indices ``[B]``."""
    return y.is_floating_point() and y.dim() == 2


def downstream_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE for class indices ``y [B]``; BCE-with-logits (mean over B·C) for multi-hot ``y [B, C]``."""
    if is_multilabel_target(y):
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def pretext_loss(
    encoder: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    temperature: float = 0.5,
    gather: bool = False,
) -> torch.Tensor:
    """NT-Xent of two views ``[B, C, H, W]``; one forward over both (BatchNorm sees 2B images).

    ``encoder`` may be a DistributedDataParallel wrapper; ``gather`` takes the negatives from
    every process.
    """
    z = encoder(torch.cat([x1, x2]))
    return nt_xent(z[: len(x1)], z[len(x1) :], temperature, gather=gather)


def proximal_penalty(backbone_p: nn.Module, backbone_d: nn.Module, lam: float) -> torch.Tensor:
    """``λ/2 · Σ_k ||θ_P,k − stopgrad(θ_D,k)||²`` over parameters (BN buffers excluded).

    Gradient flows into θ_P only: ``λ (θ_P − θ_D)``.
    """
    pairs = list(zip(backbone_p.parameters(), backbone_d.parameters(), strict=True))
    total = sum((p - d.detach()).pow(2).sum() for p, d in pairs)
    return 0.5 * lam * total  # type: ignore[return-value]


def lower_objective(
    encoder_p: Encoder,
    backbone_d: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    lam: float,
    temperature: float = 0.5,
    model: nn.Module | None = None,
    gather: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Lower-level loss ``L_P`` (gradients to θ_P and φ_P) and its two parts for logging.

    ``model`` runs the forward pass (``encoder_p`` itself, or its DDP wrapper).
    """
    ntx = pretext_loss(encoder_p if model is None else model, x1, x2, temperature, gather)
    prox = proximal_penalty(encoder_p.backbone, backbone_d, lam)
    return ntx + prox, {"pretext_loss": float(ntx.detach()), "prox": float(prox.detach())}


def bissl_term(
    backbone_p: nn.Module, model_d: DownstreamModel, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``CE(head_D(backbone_P(x)), y)``: the upper loss through the lower solution θ_P."""
    return downstream_loss(model_d.head(backbone_p(x)), y)


def classic_term(model_d: DownstreamModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(model_D(x), y)``: the classic downstream loss of θ_D, weighted by γ."""
    return downstream_loss(model_d(x), y)


def upper_objective(
    backbone_p: nn.Module,
    model_d: DownstreamModel,
    x: torch.Tensor,
    y: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Upper-level loss ``L_U`` = CE(head_D(backbone_P(x))) + γ·CE(model_D(x)) and its parts."""
    bissl = bissl_term(backbone_p, model_d, x, y)
    total = bissl
    parts = {"upper_loss": float(bissl.detach())}
    if gamma != 0:
        classic = classic_term(model_d, x, y)
        total = total + gamma * classic
        parts["classic_loss"] = float(classic.detach())
    return total, parts


def pretext_loss_of_backbone(
    encoder: Encoder, x1: torch.Tensor, x2: torch.Tensor, temperature: float = 0.5
) -> Callable[[Tensors], torch.Tensor]:
    """``f(θ) = NT-Xent`` with the backbone's parameters replaced by ``θ`` and φ_P held fixed.

    Works with live parameters (double backward) and under torch.func transforms alike; the
    projector's parameters are detached so no gradient or Hessian block is formed for them.
    """
    names = [f"backbone.{n}" for n, _ in encoder.backbone.named_parameters()]
    fixed = {f"projector.{n}": p.detach() for n, p in encoder.projector.named_parameters()}
    both = torch.cat([x1, x2])
    b = len(x1)

    def f(theta: Tensors) -> torch.Tensor:
        params = dict(zip(names, theta, strict=True))
        params.update(fixed)
        z = functional_call(encoder, params, (both,), strict=False)
        return nt_xent(z[:b], z[b:], temperature)

    return f


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Forward passes inside do not move BatchNorm running statistics (momentum set to 0).

    The curvature batch of the hypergradient is a measurement, not a training step; without this
    the recompute-per-iteration approach would update the statistics once per CG iteration.
    """
    saved: list[tuple[nn.modules.batchnorm._BatchNorm, float | None, torch.Tensor | None]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            tracked = m.num_batches_tracked
            saved.append((m, m.momentum, None if tracked is None else tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None and isinstance(m.num_batches_tracked, torch.Tensor):
                m.num_batches_tracked.copy_(count)


#: how θ_P's BatchNorm runs in the upper level's composite forward head_D(backbone_P(x))
UPPER_BN_MODES = ("train", "frozen", "eval")


@contextlib.contextmanager
def upper_bn_mode(module: nn.Module, mode: str) -> Iterator[None]:
    """BatchNorm behaviour of ``module`` for the composite forward of the upper level.

    ``train``: batch statistics, and the running statistics absorb the downstream batch (what
    the public code does: its composite forward runs in train mode); ``frozen``: batch
    statistics, running statistics untouched; ``eval``: the running statistics normalise, as in
    validation and in the head warm-up, so the gradient is that of the model being validated.
    Other modules keep their mode; every mode is restored on exit.
    """
    if mode not in UPPER_BN_MODES:
        raise ValueError(f"upper BN mode must be one of {UPPER_BN_MODES}, got {mode!r}")
    if mode == "train":
        yield
        return
    if mode == "frozen":
        with frozen_bn_statistics(module):
            yield
        return
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = [m.training for m in norms]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(norms, was, strict=True):
            m.train(training)


def has_running_stats(module: nn.Module) -> bool:
    """True if a BatchNorm in ``module`` tracks running statistics (torch.func cannot run it)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in module.modules()
    )
