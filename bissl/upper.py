"""BiSSL's upper-level gradients on one downstream batch and one pretext (curvature) pair:

    g_θD = (I + H/(λ+λ_damp))^-1 ∇_θP CE(head_D(backbone_P(x)), y) + γ ∇_θD CE(model_D(x), y)
    g_φD = ∇_φD CE(head_D(backbone_P(x)), y) + γ ∇_φD CE(model_D(x), y)

H is the Hessian of NT-Xent(x1, x2) with respect to θ_P with φ_P held fixed
(:func:`bissl.objectives.pretext_loss_of_backbone`); the solve is :mod:`bissl.implicit`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bissl.cg import CGResult
from bissl.config import BiSSLConfig
from bissl.hvp import Reduce
from bissl.implicit import implicit_gradient
from bissl.objectives import (
    DownstreamModel,
    bissl_term,
    classic_term,
    frozen_bn_statistics,
    has_running_stats,
    pretext_loss_of_backbone,
    upper_bn_mode,
)
from bissl.trees import Tensors, tree_add, tree_cosine, tree_norm
from bmssl.errors import UserError
from bmssl.nets import Encoder

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class UpperGradients:
    """Gradients for θ_D (``backbone``) and φ_D (``head``), plus the CG record and loss values.

    ``plain`` is the backbone gradient without the implicit term, ``v + γ ∇_θD CE(model_D)``
    (dθ_P*/dθ_D replaced by I); ``v`` is the right-hand side ∇_θP CE(head_D(backbone_P(x))).
    """

    backbone: Tensors
    head: Tensors
    cg: CGResult
    losses: dict[str, float]
    v: Tensors = ()
    plain: Tensors = ()

    def diagnostics(self) -> dict[str, float]:
        """Cheap numbers on the solve: cos(x, v) of the CG solution to its right-hand side,
        cos(g_θD, plain) of the final backbone gradient to the plain one, and their norms."""
        return {
            "cg_cos": tree_cosine(self.cg.x, self.v),
            "upper_cos_plain": tree_cosine(self.backbone, self.plain),
            "cg_x_norm": tree_norm(self.cg.x),
            "cg_v_norm": tree_norm(self.v),
        }


def _identity(tensors: Sequence[torch.Tensor]) -> Tensors:
    return tuple(tensors)


def upper_gradients(
    encoder_p: Encoder,
    model_d: DownstreamModel,
    batch: Pair,
    pair: Pair,
    config: BiSSLConfig,
    x0: Sequence[torch.Tensor] | None = None,
    reduce: Reduce | None = None,
) -> UpperGradients:
    """The module docstring's gradients on the downstream ``batch`` ``(x, y)`` and the pretext
    views ``pair`` ``(x1, x2)``, with λ, λ_damp, γ and θ_P's BatchNorm in the composite forward
    (``upper_bn``, :func:`bissl.objectives.upper_bn_mode`) from ``config.bilevel``, the solver
    from ``config.cg`` (``x0`` warm-starts it) and τ from ``config.pretext``.

    The curvature forwards leave θ_P's running statistics alone unless ``cg.hvp_updates_bn``
    (the public code's update them). Under data parallelism ``reduce`` averages v, every H d and
    the classic gradients, so every process returns the same gradients. No ``.grad`` is touched.
    """
    bil, cg = config.bilevel, config.cg
    if has_running_stats(encoder_p) and cg.hvp_backend == "func":
        raise UserError(
            "hvp_backend='func' needs BatchNorm without running statistics; use bn=batch (or "
            "bn=none), or hvp_backend=reuse"
        )
    red = reduce if reduce is not None else _identity
    x, y = batch
    head = tuple(model_d.head.parameters())
    theta_p = tuple(encoder_p.backbone.parameters())
    with upper_bn_mode(encoder_p.backbone, bil.upper_bn):
        loss_a = bissl_term(encoder_p.backbone, model_d, x, y)
    grads = torch.autograd.grad(loss_a, head + theta_p)
    g_head = red(grads[: len(head)])
    v = red(grads[len(head) :])
    losses = {"upper_loss": float(loss_a.detach())}

    f = pretext_loss_of_backbone(encoder_p, *pair, config.pretext.temperature)
    keep_bn = contextlib.nullcontext() if cg.hvp_updates_bn else frozen_bn_statistics(encoder_p)
    with keep_bn:
        solved = implicit_gradient(
            f, theta_p, v, bil.lam, bil.lam_damp, cg.solver(), cg.hvp_backend, x0, reduce
        )
    g_backbone, plain = solved.x, v
    if bil.gamma != 0:
        loss_b = classic_term(model_d, x, y)
        theta_d = tuple(model_d.backbone.parameters())
        classic = red(torch.autograd.grad(loss_b, theta_d + head))
        g_backbone = tree_add(g_backbone, classic[: len(theta_d)], bil.gamma)
        plain = tree_add(plain, classic[: len(theta_d)], bil.gamma)
        g_head = tree_add(g_head, classic[len(theta_d) :], bil.gamma)
        losses["classic_loss"] = float(loss_b.detach())
    return UpperGradients(g_backbone, g_head, solved, losses, tuple(v), plain)
