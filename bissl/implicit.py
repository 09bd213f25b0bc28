"""Implicit differentiation through a λ-regularised lower level.

For ``θ* = argmin_θ f(θ) + λ/2 ||θ − θ_D||²`` the implicit function theorem gives
``dθ*/dθ_D = (I + H/λ)^-1`` with ``H = ∇²f(θ*)``; a gradient ``v`` with respect to θ* becomes one
with respect to θ_D by solving ``(I + H/(λ + λ_damp)) x = v`` (λ_damp > 0 damps the system, as
in the public BiSSL code), here with Hessian-vector products and conjugate gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bissl.cg import CGResult, Solver, solve_cg
from bissl.hvp import HessianVectorProduct, Reduce, damped_operator
from bissl.trees import Tensors
from bmssl.errors import UserError


def implicit_gradient(
    f: Callable[[Tensors], torch.Tensor],
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    lam: float,
    lam_damp: float,
    solve: Solver | None = None,
    backend: str = "reuse",
    x0: Sequence[torch.Tensor] | None = None,
    reduce: Reduce | None = None,
) -> CGResult:
    """Solve ``(I + ∇²f(θ)/(λ + λ_damp)) x = v`` with ``solve`` (default :func:`solve_cg`'s) on
    Hessian-vector products of ``f`` at ``params`` from the ``backend`` (:mod:`bissl.hvp`).

    ``reduce`` (e.g. an all-reduce mean) is applied to every ``H d`` so that all processes solve
    the same system with the process-averaged Hessian.
    """
    if lam + lam_damp <= 0:
        raise UserError(f"lam + lam_damp must be positive, got {lam} + {lam_damp}")
    solve = solve if solve is not None else solve_cg()
    hvp = HessianVectorProduct(f, params, backend)
    try:
        return solve(damped_operator(hvp, 1.0 / (lam + lam_damp), reduce), v, x0)
    finally:
        hvp.release()
