"""Hessian-vector products, conjugate gradient and BiSSL's implicit (hyper)gradient.

With the lower level ``θ_P* = argmin NT-Xent(θ) + λ/2 ||θ − θ_D||²`` the implicit function theorem
gives ``dθ_P*/dθ_D = (I + H/λ)^-1`` (H: Hessian of the pretext loss w.r.t. the backbone), so the
upper gradient for θ_D is ``x`` solving

    (I + H / (λ + λ_damp)) x = v,        v = ∇_θP CE(head_D(backbone_P(x)), y)

(λ_damp > 0 damps the system, as in the public code). Vectors are tuples of tensors shaped like
the backbone's parameters. Hessian-vector products come from one of three backends:

- ``"reuse"``: the first-order graph ∇f(θ) (``create_graph=True``) is built once per upper step and
  every product is a backward pass through it (``retain_graph=True``);
- ``"recompute"``: forward, first-order and second-order pass for every product (public code);
- ``"func"``: forward-over-reverse ``torch.func.jvp(grad(f))``; needs BatchNorm without running
  statistics (bn="batch"/"none" or ``torch.func.replace_all_batch_norm_modules_``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from bissl.objectives import (
    DownstreamModel,
    bissl_term,
    classic_term,
    frozen_bn_statistics,
    has_running_stats,
    pretext_loss_of_backbone,
    upper_bn_mode,
)
from bmssl.errors import UserError, check_choice
from bmssl.nets import Encoder

Tensors = tuple[torch.Tensor, ...]
MatVec = Callable[[Tensors], Tensors]
Reduce = Callable[[Tensors], Tensors]

HVP_BACKENDS = ("reuse", "recompute", "func")
CG_MODES = ("exact", "layerwise")
#: the public code's guard against division by zero in the layerwise α and β
LAYERWISE_EPS = 1e-12


class CGBreakdown(FloatingPointError):
    """Conjugate gradient produced a non-finite value; the message names the iteration."""


# -- vector helpers (tuples of tensors) ----------------------------------------------------------


def tree_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k <a_k, b_k>`` as a 0-d tensor."""
    return torch.stack([torch.sum(x * y) for x, y in zip(a, b, strict=True)]).sum()


def _float64_sums(terms: list[torch.Tensor]) -> float:
    """``Σ_k terms_k`` (0-d tensors), summed in float64 in order, with one device sync.

    One ``.tolist()`` for all the terms: a ``float()`` per tensor would wait on the device once
    per parameter tensor (hundreds per step for a ResNet)."""
    return sum(torch.stack(terms).tolist()) if terms else 0.0


def tree_norm(a: Sequence[torch.Tensor]) -> float:
    """Euclidean norm of the concatenation of ``a``."""
    return math.sqrt(_float64_sums([torch.sum(x.double() ** 2) for x in a]))


def tree_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """``<a, b> / (||a|| ||b||)`` over the concatenations (0 when either is zero)."""
    na, nb = tree_norm(a), tree_norm(b)
    if na == 0 or nb == 0:
        return 0.0
    dot = _float64_sums([torch.sum(x.double() * y.double()) for x, y in zip(a, b, strict=True)])
    return dot / (na * nb)


def tree_add(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], alpha: float = 1.0) -> Tensors:
    """``a + alpha·b``."""
    return tuple(x.add(y, alpha=alpha) for x, y in zip(a, b, strict=True))


def flatten(a: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate a tuple of tensors into one vector ``[Σ numel]``."""
    return torch.cat([x.reshape(-1) for x in a])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> Tensors:
    """Inverse of :func:`flatten` with the shapes of ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vec[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tuple(out)


# -- Hessian-vector products ---------------------------------------------------------------------


class HessianVectorProduct:
    """``v ↦ ∇²f(θ) v`` for a scalar ``f`` of the tensors ``θ`` (which must require grad).

    ``f(θ)`` is a functional loss (e.g. :func:`bissl.objectives.pretext_loss_of_backbone`). Outputs
    have the shapes of ``θ``; a tensor on which the gradient does not depend gets zeros.
    ``calls`` counts products; ``first_order_builds`` counts first-order graphs built.
    """

    def __init__(
        self,
        f: Callable[[Tensors], torch.Tensor],
        params: Sequence[torch.Tensor],
        backend: str = "reuse",
    ) -> None:
        check_choice("hvp backend", backend, HVP_BACKENDS)
        self.f = f
        self.params = tuple(params)
        self.backend = backend
        self.calls = 0
        self.first_order_builds = 0
        self._grads: Tensors | None = None
        if backend == "reuse":
            self._grads = self._first_order()

    def _first_order(self) -> Tensors:
        self.first_order_builds += 1
        with torch.enable_grad():
            loss = self.f(self.params)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return tuple(
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)
        )

    def _double_backward(self, grads: Tensors, v: Tensors, retain: bool) -> Tensors:
        # Only entries whose gradient still depends on θ carry second-order terms.
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        out = [torch.zeros_like(p) for p in self.params]
        if live:
            second = torch.autograd.grad(
                [grads[i] for i in live],
                self.params,
                grad_outputs=[v[i].to(grads[i].dtype) for i in live],
                retain_graph=retain,
                allow_unused=True,
            )
            for k, s in enumerate(second):
                if s is not None:
                    out[k] = s.detach()
        return tuple(out)

    def __call__(self, v: Sequence[torch.Tensor]) -> Tensors:
        v = tuple(t.detach() for t in v)
        self.calls += 1
        if self.backend == "reuse":
            assert self._grads is not None
            return self._double_backward(self._grads, v, retain=True)
        if self.backend == "recompute":
            return self._double_backward(self._first_order(), v, retain=False)
        primals = tuple(p.detach() for p in self.params)
        out = torch.func.jvp(torch.func.grad(self.f), (primals,), (v,))
        return tuple(t.detach() for t in out[1])

    def release(self) -> None:
        """Free the retained first-order graph (``reuse`` backend)."""
        self._grads = None


def damped_operator(
    hvp: Callable[[Tensors], Tensors], scale: float, reduce: Reduce | None = None
) -> MatVec:
    """``d ↦ d + scale·H d`` (with ``H d`` averaged over processes by ``reduce`` if given)."""

    def matvec(d: Tensors) -> Tensors:
        hd = hvp(d)
        if reduce is not None:
            hd = reduce(hd)
        return tuple(x + scale * y for x, y in zip(d, hd, strict=True))

    return matvec


# -- conjugate gradient --------------------------------------------------------------------------


@dataclass
class CGResult:
    """Solution ``x`` of ``A x = b`` and how CG got there.

    ``residuals[k]`` is ||r_k|| (the recurrence residual) after k iterations, ``residuals[0]`` =
    ||b − A x_0||; ``converged`` means ||r|| <= max(rtol·||b||, atol) was reached; ``breakdown``
    is set when CG stopped on non-positive curvature (``dᵀAd <= 0``, system not positive definite).
    """

    x: Tensors
    residuals: list[float]
    iterations: int
    converged: bool
    b_norm: float
    breakdown: str | None = None
    true_residual: float | None = None
    matvecs: int = 0
    history_rel: list[float] = field(default_factory=list)

    @property
    def relative_residual(self) -> float:
        """Final ||r|| / ||b|| (0 when b = 0)."""
        return self.residuals[-1] / self.b_norm if self.b_norm > 0 else 0.0


def _check_finite(name: str, value: float | torch.Tensor, iteration: int, mode: str) -> None:
    bad = not math.isfinite(float(value))
    if bad:
        raise CGBreakdown(
            f"conjugate gradient ({mode}) produced a non-finite {name} ({float(value)}) at "
            f"iteration {iteration}; the Hessian-vector product overflowed or the network "
            f"diverged: lower the learning rates or raise lam_damp"
        )


def conjugate_gradient(
    matvec: MatVec,
    b: Sequence[torch.Tensor],
    maxiter: int = 5,
    rtol: float = 0.0,
    atol: float = 0.0,
    x0: Sequence[torch.Tensor] | None = None,
    mode: str = "exact",
    check_residual: bool = False,
) -> CGResult:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given as ``matvec``.

    ``exact``: textbook CG on the whole vector (one α and β per iteration); stops after
    ``maxiter`` iterations or when ||r|| <= max(rtol·||b||, atol); on non-positive curvature
    (A indefinite, e.g. an NT-Xent Hessian with eigenvalues below −(λ+λ_damp)) it stops with
    the current iterate, or ``x0 + r0`` if that happens at the first iteration. ``layerwise``: the public BiSSL
    solver, one α_k = <r_k,r_k>/(<d_k,(Ad)_k> + ε) and β_k = <r_k',r_k'>/(<r_k,r_k> + ε) per tensor
    k (ε = 1e-12), which is not CG on the full system and may stall. ``x0`` warm-starts.
    ``check_residual`` spends one more product to record ||b − A x|| in ``true_residual``.
    Non-finite values raise :class:`CGBreakdown` naming the iteration.
    """
    check_choice("cg mode", mode, CG_MODES)
    if maxiter < 0:
        raise UserError(f"cg maxiter must be >= 0, got {maxiter}")
    b = tuple(t.detach() for t in b)
    matvecs = 0
    if x0 is not None:
        x = tuple(t.detach().clone() for t in x0)
        ax = matvec(x)
        matvecs += 1
        r = tuple(bi - ai for bi, ai in zip(b, ax, strict=True))
    else:
        x = tuple(torch.zeros_like(t) for t in b)
        r = tuple(t.clone() for t in b)
    d = tuple(t.clone() for t in r)
    b_norm = tree_norm(b)
    tol = max(rtol * b_norm, atol)
    rr_k = [torch.sum(t * t) for t in r]
    rr = float(sum(float(v) for v in rr_k))
    _check_finite("initial residual", rr, 0, mode)
    residuals = [math.sqrt(rr)]
    converged = residuals[0] <= tol
    breakdown = None
    it = 0
    while not converged and it < maxiter:
        it += 1
        ad = matvec(d)
        matvecs += 1
        if mode == "exact":
            dad = float(tree_dot(d, ad))
            _check_finite("curvature dᵀAd", dad, it, mode)
            if dad <= 0:
                breakdown = f"non-positive curvature dᵀAd={dad:.3g} at iteration {it}"
                if it == 1:
                    # no step taken yet: fall back to one Richardson step x = x0 + r0, the
                    # solution for A = I (as truncated Newton-CG falls back to the gradient)
                    x = tree_add(x, r)
                it -= 1
                break
            alpha = rr / dad
            x = tree_add(x, d, alpha)
            r = tree_add(r, ad, -alpha)
            rr_new = float(tree_dot(r, r))
            _check_finite("residual", rr_new, it, mode)
            beta = rr_new / rr
            d = tree_add(r, d, beta)
            rr = rr_new
        else:
            dad_k = [torch.sum(di * adi) for di, adi in zip(d, ad, strict=True)]
            alphas = [rk / (dk + LAYERWISE_EPS) for rk, dk in zip(rr_k, dad_k, strict=True)]
            x = tuple(xi + a * di for xi, a, di in zip(x, alphas, d, strict=True))
            r = tuple(ri - a * adi for ri, a, adi in zip(r, alphas, ad, strict=True))
            new_k = [torch.sum(t * t) for t in r]
            betas = [nk / (rk + LAYERWISE_EPS) for nk, rk in zip(new_k, rr_k, strict=True)]
            d = tuple(ri + bk * di for ri, bk, di in zip(r, betas, d, strict=True))
            rr_k = new_k
            rr = float(sum(float(v) for v in rr_k))
            _check_finite("residual", rr, it, mode)
        residuals.append(math.sqrt(rr))
        converged = residuals[-1] <= tol
    for k, t in enumerate(x):
        if not bool(torch.isfinite(t).all()):
            raise CGBreakdown(
                f"conjugate gradient ({mode}) solution tensor {k} is non-finite after iteration "
                f"{it}; lower the learning rates or raise lam_damp"
            )
    true_res = None
    if check_residual:
        true_res = tree_norm(tree_add(b, matvec(x), -1.0))
        matvecs += 1
    return CGResult(
        x=x,
        residuals=residuals,
        iterations=it,
        converged=converged,
        b_norm=b_norm,
        breakdown=breakdown,
        true_residual=true_res,
        matvecs=matvecs,
        history_rel=[r_ / b_norm if b_norm > 0 else 0.0 for r_ in residuals],
    )


# -- BiSSL's upper-level gradient ----------------------------------------------------------------


@dataclass(frozen=True)
class CGSettings:
    """How the damped system is solved: iterations, tolerances, mode, warm start, HVP backend."""

    maxiter: int = 5
    rtol: float = 0.0
    atol: float = 0.0
    mode: Literal["exact", "layerwise"] = "exact"
    backend: Literal["reuse", "recompute", "func"] = "reuse"


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


def implicit_gradient(
    f: Callable[[Tensors], torch.Tensor],
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    lam: float,
    lam_damp: float,
    settings: CGSettings = CGSettings(),
    x0: Sequence[torch.Tensor] | None = None,
    reduce: Reduce | None = None,
    check_residual: bool = False,
) -> CGResult:
    """Solve ``(I + ∇²f(θ)/(λ + λ_damp)) x = v`` by CG with Hessian-vector products of ``f``.

    ``reduce`` (e.g. an all-reduce mean) is applied to every ``H d`` so that all processes solve
    the same system with the process-averaged Hessian.
    """
    if lam + lam_damp <= 0:
        raise UserError(f"lam + lam_damp must be positive, got {lam} + {lam_damp}")
    hvp = HessianVectorProduct(f, params, settings.backend)
    try:
        matvec = damped_operator(hvp, 1.0 / (lam + lam_damp), reduce)
        return conjugate_gradient(
            matvec,
            v,
            settings.maxiter,
            settings.rtol,
            settings.atol,
            x0,
            settings.mode,
            check_residual,
        )
    finally:
        hvp.release()


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> Tensors:
    """Average ``tensors`` over the default process group (identity without one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(tensors)
    world = dist.get_world_size()
    flat = flatten([t.detach() for t in tensors]).clone()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return unflatten(flat / world, tensors)


def upper_gradients(
    encoder_p: Encoder,
    model_d: DownstreamModel,
    x: torch.Tensor,
    y: torch.Tensor,
    x1_p: torch.Tensor,
    x2_p: torch.Tensor,
    *,
    lam: float,
    lam_damp: float,
    gamma: float,
    temperature: float = 0.5,
    settings: CGSettings = CGSettings(),
    x0: Sequence[torch.Tensor] | None = None,
    reduce: Reduce | None = None,
    check_residual: bool = False,
    composite_bn: str = "train",
    hvp_updates_bn: bool = False,
) -> UpperGradients:
    """BiSSL's upper-level gradients on a downstream batch ``(x, y)`` and a pretext pair.

    g_θD = (I + H/(λ+λ_damp))^-1 ∇_θP CE(head_D(backbone_P(x))) + γ ∇_θD CE(model_D(x))
    g_φD = ∇_φD CE(head_D(backbone_P(x))) + γ ∇_φD CE(model_D(x))
    H is the Hessian of NT-Xent(x1_p, x2_p) w.r.t. θ_P with φ_P fixed (batch statistics, running
    statistics untouched unless ``hvp_updates_bn``, as in the public code). ``composite_bn`` sets
    θ_P's BatchNorm in the composite forward (:func:`bissl.objectives.upper_bn_mode`). Under data parallelism ``reduce`` averages v,
    every H d and the classic gradients, so every process returns the same gradients. No
    parameter's ``.grad`` is touched.
    """
    theta_p = tuple(encoder_p.backbone.parameters())
    head = tuple(model_d.head.parameters())
    theta_d = tuple(model_d.backbone.parameters())
    red = reduce if reduce is not None else (lambda t: tuple(t))

    with upper_bn_mode(encoder_p.backbone, composite_bn):
        loss_a = bissl_term(encoder_p.backbone, model_d, x, y)
    grads = torch.autograd.grad(loss_a, head + theta_p)
    g_head = red(grads[: len(head)])
    v = red(grads[len(head) :])
    losses = {"upper_loss": float(loss_a.detach())}

    if has_running_stats(encoder_p) and settings.backend == "func":
        raise UserError(
            "hvp_backend='func' needs BatchNorm without running statistics; use bn=batch (or "
            "bn=none), or hvp_backend=reuse"
        )
    f = pretext_loss_of_backbone(encoder_p, x1_p, x2_p, temperature)
    # The curvature batch is a measurement: by default its forwards leave θ_P's running
    # statistics alone (the public code's train-mode forwards update them every product).
    hvp_bn = contextlib.nullcontext() if hvp_updates_bn else frozen_bn_statistics(encoder_p)
    with hvp_bn:
        cg = implicit_gradient(
            f, theta_p, v, lam, lam_damp, settings, x0, reduce, check_residual=check_residual
        )
    g_backbone, plain = cg.x, v

    if gamma != 0:
        loss_b = classic_term(model_d, x, y)
        classic = red(torch.autograd.grad(loss_b, theta_d + head))
        g_backbone = tree_add(g_backbone, classic[: len(theta_d)], gamma)
        plain = tree_add(plain, classic[: len(theta_d)], gamma)
        g_head = tree_add(g_head, classic[len(theta_d) :], gamma)
        losses["classic_loss"] = float(loss_b.detach())
    return UpperGradients(
        backbone=g_backbone, head=g_head, cg=cg, losses=losses, v=tuple(v), plain=plain
    )
