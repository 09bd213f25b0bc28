"""Conjugate gradient for ``A x = b`` on tuples of tensors, ``A`` given as a matrix-vector product.

Two iteration rules behind one solver (:func:`conjugate_gradient`, or torchopt-style
:func:`solve_cg`, which takes the settings first and returns ``solve(matvec, b, x0)``):

- ``exact`` (:func:`cg_exact`): textbook CG on the whole vector, α = rᵀr / dᵀAd and
  β = r'ᵀr' / rᵀr, with a stop on non-positive curvature (A indefinite);
- ``layerwise`` (:func:`cg_layerwise`): the public BiSSL solver, one α_k and β_k per tensor k,
  which is not CG on the full system (the blocks stay coupled through A d) and may stall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bissl.hvp import MatVec
from bissl.trees import Tensors, tree_add, tree_dot, tree_norm
from bmssl.errors import UserError, check_choice

CG_MODES = ("exact", "layerwise")
#: the public code's guard against division by zero in the layerwise α and β
LAYERWISE_EPS = 1e-12


class CGBreakdown(FloatingPointError):
    """Conjugate gradient produced a non-finite value; the message names the iteration."""


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


@dataclass
class Iterates:
    """What an iteration rule returns: the last iterate, ||r_k|| for k = 0..iterations, the
    products it spent, and why it stopped early (non-positive curvature), if it did."""

    x: Tensors
    residuals: list[float]
    iterations: int
    matvecs: int
    breakdown: str | None = None


def _check_finite(name: str, value: float, iteration: int, mode: str) -> None:
    if not math.isfinite(value):
        raise CGBreakdown(
            f"conjugate gradient ({mode}) produced a non-finite {name} ({value}) at iteration "
            f"{iteration}; the Hessian-vector product overflowed or the network diverged: "
            "lower the learning rates or raise lam_damp"
        )


def _squared_norms(r: Tensors, iteration: int, mode: str) -> tuple[list[torch.Tensor], float]:
    """``[rᵀ_k r_k]`` per tensor and their sum (Python floats, in order), checked finite."""
    per_tensor = [torch.sum(t * t) for t in r]
    total = float(sum(float(v) for v in per_tensor))
    _check_finite("initial residual" if iteration == 0 else "residual", total, iteration, mode)
    return per_tensor, total


def cg_exact(matvec: MatVec, x: Tensors, r: Tensors, maxiter: int, tol: float) -> Iterates:
    """Textbook CG from ``x`` with residual ``r = b − A x``, until ||r|| <= ``tol`` or ``maxiter``.

    On non-positive curvature dᵀAd <= 0 it stops with the current iterate, or with ``x + r`` at
    the first iteration (one Richardson step, the solution for A = I, as truncated Newton-CG
    falls back to the gradient).
    """
    d = tuple(t.clone() for t in r)
    _, rr = _squared_norms(r, 0, "exact")
    residuals, it, matvecs = [math.sqrt(rr)], 0, 0
    while not residuals[-1] <= tol and it < maxiter:
        it += 1
        ad = matvec(d)
        matvecs += 1
        dad = float(tree_dot(d, ad))
        _check_finite("curvature dᵀAd", dad, it, "exact")
        if dad <= 0:
            stop = f"non-positive curvature dᵀAd={dad:.3g} at iteration {it}"
            return Iterates(tree_add(x, r) if it == 1 else x, residuals, it - 1, matvecs, stop)
        alpha = rr / dad
        x = tree_add(x, d, alpha)
        r = tree_add(r, ad, -alpha)
        rr_new = float(tree_dot(r, r))
        _check_finite("residual", rr_new, it, "exact")
        d = tree_add(r, d, rr_new / rr)
        rr = rr_new
        residuals.append(math.sqrt(rr))
    return Iterates(x, residuals, it, matvecs)


def cg_layerwise(matvec: MatVec, x: Tensors, r: Tensors, maxiter: int, tol: float) -> Iterates:
    """The public BiSSL rule: per tensor k, α_k = r_kᵀr_k / (d_kᵀ(Ad)_k + ε) and
    β_k = r_k'ᵀr_k' / (r_kᵀr_k + ε) (ε = :data:`LAYERWISE_EPS`); stops as :func:`cg_exact`
    does, but has no curvature test."""
    d = tuple(t.clone() for t in r)
    rr_k, rr = _squared_norms(r, 0, "layerwise")
    residuals, it = [math.sqrt(rr)], 0
    while not residuals[-1] <= tol and it < maxiter:
        it += 1
        ad = matvec(d)
        dad_k = [torch.sum(di * adi) for di, adi in zip(d, ad, strict=True)]
        alphas = [rk / (dk + LAYERWISE_EPS) for rk, dk in zip(rr_k, dad_k, strict=True)]
        x = tuple(xi + a * di for xi, a, di in zip(x, alphas, d, strict=True))
        r = tuple(ri - a * adi for ri, a, adi in zip(r, alphas, ad, strict=True))
        new_k, rr = _squared_norms(r, it, "layerwise")
        betas = [nk / (rk + LAYERWISE_EPS) for nk, rk in zip(new_k, rr_k, strict=True)]
        d = tuple(ri + bk * di for ri, bk, di in zip(r, betas, d, strict=True))
        rr_k = new_k
        residuals.append(math.sqrt(rr))
    return Iterates(x, residuals, it, it)


RULES: dict[str, Callable[[MatVec, Tensors, Tensors, int, float], Iterates]] = {
    "exact": cg_exact,
    "layerwise": cg_layerwise,
}


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
    """Solve ``A x = b`` (A symmetric, given as ``matvec``) from ``x0`` (default 0) by the rule
    ``mode`` (:data:`RULES`), stopping after ``maxiter`` iterations or at
    ||r|| <= max(rtol·||b||, atol).

    ``check_residual`` spends one more product to record ||b − A x|| in ``true_residual``.
    Non-finite values raise :class:`CGBreakdown` naming the iteration.
    """
    check_choice("cg mode", mode, CG_MODES)
    if maxiter < 0:
        raise UserError(f"cg maxiter must be >= 0, got {maxiter}")
    b = tuple(t.detach() for t in b)
    if x0 is not None:
        x = tuple(t.detach().clone() for t in x0)
        r = tuple(bi - ai for bi, ai in zip(b, matvec(x), strict=True))
    else:
        x, r = tuple(torch.zeros_like(t) for t in b), tuple(t.clone() for t in b)
    b_norm = tree_norm(b)
    tol = max(rtol * b_norm, atol)
    run = RULES[mode](matvec, x, r, maxiter, tol)
    for k, t in enumerate(run.x):
        if not bool(torch.isfinite(t).all()):
            raise CGBreakdown(
                f"conjugate gradient ({mode}) solution tensor {k} is non-finite after iteration "
                f"{run.iterations}; lower the learning rates or raise lam_damp"
            )
    true_res = tree_norm(tree_add(b, matvec(run.x), -1.0)) if check_residual else None
    return CGResult(
        x=run.x,
        residuals=run.residuals,
        iterations=run.iterations,
        converged=run.residuals[-1] <= tol,
        b_norm=b_norm,
        breakdown=run.breakdown,
        true_residual=true_res,
        matvecs=run.matvecs + (x0 is not None) + check_residual,
        history_rel=[r_ / b_norm if b_norm > 0 else 0.0 for r_ in run.residuals],
    )


Solver = Callable[[MatVec, Sequence[torch.Tensor], Sequence[torch.Tensor] | None], CGResult]


def solve_cg(
    mode: str = "exact",
    maxiter: int = 5,
    rtol: float = 0.0,
    atol: float = 0.0,
    check_residual: bool = False,
) -> Solver:
    """The settings now, the system later: ``solve(matvec, b, x0)`` runs
    :func:`conjugate_gradient` with them (torchopt's ``linear_solve.solve_cg``)."""
    check_choice("cg mode", mode, CG_MODES)

    def solve(
        matvec: MatVec, b: Sequence[torch.Tensor], x0: Sequence[torch.Tensor] | None = None
    ) -> CGResult:
        return conjugate_gradient(matvec, b, maxiter, rtol, atol, x0, mode, check_residual)

    return solve
