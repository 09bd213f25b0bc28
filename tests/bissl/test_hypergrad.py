"""The hypergradient's mathematics (bissl.hvp, bissl.cg, bissl.implicit, bissl.upper) against
independent answers (closed forms, dense solves, finite differences, a direct reimplementation of
the layerwise rule)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bissl.cg import CGBreakdown, cg_exact, cg_layerwise, conjugate_gradient, solve_cg
from bissl.config import BiSSLConfig
from bissl.hvp import HessianVectorProduct, damped_operator
from bissl.implicit import implicit_gradient
from bissl.objectives import DownstreamModel, frozen_bn_statistics, pretext_loss_of_backbone
from bissl.trees import flatten, unflatten
from bissl.upper import upper_gradients
from bmssl.config import config_from_dict
from bmssl.errors import UserError
from bmssl.nets import build_encoder

SHAPES = [(3, 4), (5,), (2, 2, 2)]


def _spd(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.linspace(lo, hi, n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


def _params(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES
    )


@pytest.mark.parametrize("lam", [0.5, 1e-3])
def test_implicit_gradient_matches_closed_form_on_quadratic_bilevel(lam: float) -> None:
    """Lower f(θ) = ½θᵀAθ − bᵀθ + λ/2||θ − θ_D||², upper F = ½||Wθ − c||². The hypergradient
    dF(θ*(θ_D))/dθ_D is differentiated through θ* = (A + λI)^-1 (b + λθ_D) by autograd."""
    gen = torch.Generator().manual_seed(0)
    n = sum(int(np.prod(s)) for s in SHAPES)
    a = _spd(n, 0.1, 5.0, gen)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.randn(6, n, generator=gen, dtype=torch.float64)
    c = torch.randn(6, generator=gen, dtype=torch.float64)
    theta_d = torch.randn(n, generator=gen, dtype=torch.float64)

    def lower_solution(td: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(a + lam * torch.eye(n, dtype=torch.float64), b + lam * td)

    def upper(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((w @ theta - c) ** 2).sum()

    closed = torch.func.grad(lambda td: upper(lower_solution(td)))(theta_d)

    theta_star = lower_solution(theta_d)
    params = tuple(t.detach().requires_grad_() for t in unflatten(theta_star.clone(), _params(gen)))

    def f(theta: tuple[torch.Tensor, ...]) -> torch.Tensor:
        vec = flatten(theta)
        return 0.5 * vec @ a @ vec - b @ vec

    v = unflatten(torch.func.grad(upper)(theta_star), params)
    result = implicit_gradient(f, params, v, lam, 0.0, solve_cg(maxiter=200, rtol=1e-13))
    got = flatten(result.x)
    assert result.converged
    assert float((got - closed).norm() / closed.norm()) < 1e-6
    # warm start from the answer needs no iteration; from nearby it needs fewer
    again = implicit_gradient(
        f, params, v, lam, 0.0, solve_cg(maxiter=200, rtol=1e-10), x0=result.x
    )
    assert again.iterations == 0 and again.converged


def _config(gamma: float, lam_damp: float, **cg) -> BiSSLConfig:
    """λ = 1e-3 and the given γ, λ_damp and ``cg_<field>`` values; CG from a zero start."""
    cg = {"cg.rtol": 0.0, **{f"cg.{k[3:]}": v for k, v in cg.items()}}
    values = {"bilevel.lam": 1e-3, "bilevel.gamma": gamma, "bilevel.lam_damp": lam_damp, **cg}
    return config_from_dict(BiSSLConfig, values)


def _tiny_encoder(bn: str = "batch", seed: int = 0):
    torch.manual_seed(seed)
    enc = build_encoder("conv4", 1, 16, 4, bn, 16, 8).double()
    enc.train()
    return enc


def _views(seed: int = 1, n: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, 1, 16, 16, generator=gen, dtype=torch.float64)
    x2 = (x1 + 0.1 * torch.randn(n, 1, 16, 16, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x1, x2


def _dense_hessian(f, params) -> torch.Tensor:
    flat = flatten([p.detach() for p in params])
    return torch.autograd.functional.hessian(lambda vec: f(unflatten(vec, params)), flat)


@pytest.mark.parametrize("bn", ["batch", "track"])
def test_cg_equals_dense_hessian_solve_on_tiny_net(bn: str) -> None:
    enc = _tiny_encoder(bn)
    x1, x2 = _views()
    params = tuple(enc.backbone.parameters())
    f = pretext_loss_of_backbone(enc, x1, x2)
    with frozen_bn_statistics(enc):
        h = _dense_hessian(f, params)
        n = h.shape[0]
        eig = torch.linalg.eigvalsh(h)
        lam, damp = 1e-3, max(10.0, 2.0 * float(-eig.min()))
        c = lam + damp
        system = torch.eye(n, dtype=torch.float64) + h / c
        gen = torch.Generator().manual_seed(3)
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        dense = torch.linalg.solve(system, v)
        # the Hessian term must matter for this to test anything
        assert float((dense - v).norm() / v.norm()) > 1e-2
        result = implicit_gradient(
            f, params, unflatten(v, params), lam, damp, solve_cg(maxiter=n, rtol=1e-12)
        )
    assert result.converged and result.iterations < n
    assert float((flatten(result.x) - dense).norm() / dense.norm()) < 1e-8


@pytest.mark.parametrize("backend", ["reuse", "recompute", "func"])
def test_hvp_equals_finite_differences_of_gradients(backend: str) -> None:
    enc = _tiny_encoder("batch")
    x1, x2 = _views()
    params = tuple(enc.backbone.parameters())
    f = pretext_loss_of_backbone(enc, x1, x2)
    gen = torch.Generator().manual_seed(5)
    v = tuple(torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params)
    hv = flatten(HessianVectorProduct(f, params, backend)(v))

    def grad_at(shift: float) -> torch.Tensor:
        moved = tuple((p.detach() + shift * t).requires_grad_() for p, t in zip(params, v))
        return flatten(torch.autograd.grad(f(moved), moved))

    # ReLU / max-pool kinks lie within ~1e-5 of θ on this tiny net: a small step stays clear
    eps = 1e-7
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    assert float((hv - fd).norm() / fd.norm()) < 1e-6


def test_reuse_builds_first_order_graph_once_and_matches_recompute() -> None:
    enc = _tiny_encoder("track")
    x1, x2 = _views()
    params = tuple(enc.backbone.parameters())
    f = pretext_loss_of_backbone(enc, x1, x2)
    gen = torch.Generator().manual_seed(7)
    vs = [
        tuple(torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params)
        for _ in range(4)
    ]
    with frozen_bn_statistics(enc):
        reuse = HessianVectorProduct(f, params, "reuse")
        recompute = HessianVectorProduct(f, params, "recompute")
        for v in vs:
            torch.testing.assert_close(
                flatten(reuse(v)), flatten(recompute(v)), rtol=1e-10, atol=1e-12
            )
    assert reuse.first_order_builds == 1 and reuse.calls == 4
    assert recompute.first_order_builds == 4


def test_func_backend_refuses_running_statistics() -> None:
    enc = _tiny_encoder("track")
    model_d = DownstreamModel(copy.deepcopy(enc.backbone), 3).double()
    x1, x2 = _views()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with pytest.raises(UserError, match="bn=batch"):
        upper_gradients(enc, model_d, (x1, y), (x1, x2), _config(0.0, 10.0, cg_hvp_backend="func"))


def _layerwise_reference(a: np.ndarray, b: np.ndarray, blocks: list[int], iters: int) -> np.ndarray:
    """The public code's per-tensor rule written out on numpy blocks of one vector."""
    eps = 1e-12
    cuts = np.cumsum([0, *blocks])
    sl = [slice(cuts[i], cuts[i + 1]) for i in range(len(blocks))]
    x = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    rr = [float(r[s] @ r[s]) for s in sl]
    for _ in range(iters):
        ad = a @ d
        x_new, r_new, d_new = x.copy(), r.copy(), d.copy()
        new_rr = []
        for k, s in enumerate(sl):
            alpha = rr[k] / (float(d[s] @ ad[s]) + eps)
            x_new[s] = x[s] + alpha * d[s]
            r_new[s] = r[s] - alpha * ad[s]
            new_rr.append(float(r_new[s] @ r_new[s]))
            beta = new_rr[k] / (rr[k] + eps)
            d_new[s] = r_new[s] + beta * d[s]
        x, r, d, rr = x_new, r_new, d_new, new_rr
    return x


@pytest.mark.parametrize("iters", [1, 3, 6])
def test_layerwise_mode_equals_direct_reimplementation(iters: int) -> None:
    gen = torch.Generator().manual_seed(11)
    blocks = [3, 4, 2]
    n = sum(blocks)
    a = _spd(n, 0.5, 4.0, gen)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    like = tuple(torch.zeros(k, dtype=torch.float64) for k in blocks)
    result = conjugate_gradient(
        lambda d: unflatten(a @ flatten(d), like),
        unflatten(b, like),
        maxiter=iters,
        mode="layerwise",
    )
    expected = _layerwise_reference(a.numpy(), b.numpy(), blocks, iters)
    np.testing.assert_allclose(flatten(result.x).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_layerwise_with_one_tensor_is_exact_cg() -> None:
    gen = torch.Generator().manual_seed(12)
    a = _spd(6, 0.5, 3.0, gen)
    b = (torch.randn(6, generator=gen, dtype=torch.float64),)
    mv = lambda d: (a @ d[0],)  # noqa: E731
    lw = conjugate_gradient(mv, b, maxiter=4, mode="layerwise")
    ex = conjugate_gradient(mv, b, maxiter=4, mode="exact")
    torch.testing.assert_close(lw.x[0], ex.x[0], rtol=1e-9, atol=1e-12)


def test_exact_cg_stops_at_tolerance_and_records_residuals() -> None:
    gen = torch.Generator().manual_seed(13)
    a = _spd(20, 1.0, 3.0, gen)
    b = (torch.randn(20, generator=gen, dtype=torch.float64),)
    result = conjugate_gradient(
        lambda d: (a @ d[0],), b, maxiter=100, rtol=1e-6, check_residual=True
    )
    assert result.converged and result.iterations < 20
    assert len(result.residuals) == result.iterations + 1
    assert result.relative_residual <= 1e-6
    assert result.true_residual is not None and result.true_residual / result.b_norm < 1e-5
    stopped = conjugate_gradient(lambda d: (a @ d[0],), b, maxiter=2, rtol=1e-12)
    assert stopped.iterations == 2 and not stopped.converged


def test_non_finite_value_names_the_iteration() -> None:
    calls = {"n": 0}
    diag = torch.arange(1.0, 6.0, dtype=torch.float64)

    def matvec(d):
        calls["n"] += 1
        return (d[0] * diag * (float("nan") if calls["n"] == 3 else 1.0),)

    with pytest.raises(CGBreakdown, match="iteration 3"):
        conjugate_gradient(matvec, (torch.randn(5, dtype=torch.float64),), maxiter=10, rtol=0.0)


def test_negative_curvature_stops_without_crashing() -> None:
    a = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    result = conjugate_gradient(
        lambda d: (a @ d[0],), (torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),), maxiter=10
    )
    assert result.breakdown is not None and "curvature" in result.breakdown
    assert all(torch.isfinite(t).all() for t in result.x)
    # negative curvature along b itself: the fallback is one Richardson step, x = b
    b = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    first = conjugate_gradient(lambda d: (a @ d[0],), (b,), maxiter=10)
    assert first.iterations == 0 and "iteration 1" in first.breakdown
    torch.testing.assert_close(first.x[0], b)


def test_damped_operator_applies_reduce_to_hessian_products() -> None:
    seen = []

    def reduce(t):
        seen.append(True)
        return tuple(x * 0.5 for x in t)

    op = damped_operator(lambda d: tuple(2 * x for x in d), 0.1, reduce)
    out = op((torch.ones(3),))
    torch.testing.assert_close(out[0], torch.full((3,), 1.1))
    assert seen


def test_upper_gradients_assemble_the_bissl_formula() -> None:
    """g_θD = (I + H/(λ+λ_d))^-1 ∇_θP CE(head_D∘bb_P) + γ ∇_θD CE(model_D), checked densely."""
    enc = _tiny_encoder("batch", seed=2)
    torch.manual_seed(4)
    model_d = DownstreamModel(copy.deepcopy(enc.backbone), 3).double()
    with torch.no_grad():  # θ_D ≠ θ_P, as after some alternations
        for p in model_d.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x1, x2 = _views(seed=6)
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    theta_p = tuple(enc.backbone.parameters())
    h = _dense_hessian(pretext_loss_of_backbone(enc, x1, x2), theta_p)
    lam, gamma = 1e-3, 0.7  # λ as _config's
    damp = max(10.0, 2.0 * float(-torch.linalg.eigvalsh(h).min()))  # a positive definite system
    got = upper_gradients(
        enc, model_d, (x, y), (x1, x2), _config(gamma, damp, cg_iters=500, cg_rtol=1e-12)
    )
    assert got.cg.converged
    head = tuple(model_d.head.parameters())
    theta_d = tuple(model_d.backbone.parameters())
    loss_a = F.cross_entropy(model_d.head(enc.backbone(x)), y)
    v = flatten(torch.autograd.grad(loss_a, theta_p, retain_graph=True))
    g_head_a = flatten(torch.autograd.grad(loss_a, head))
    solved = torch.linalg.solve(torch.eye(len(v), dtype=torch.float64) + h / (lam + damp), v)
    loss_b = F.cross_entropy(model_d(x), y)
    g_theta_d = flatten(torch.autograd.grad(loss_b, theta_d, retain_graph=True))
    g_head_b = flatten(torch.autograd.grad(loss_b, head))
    torch.testing.assert_close(
        flatten(got.backbone), solved + gamma * g_theta_d, rtol=1e-7, atol=1e-10
    )
    torch.testing.assert_close(
        flatten(got.head), g_head_a + gamma * g_head_b, rtol=1e-9, atol=1e-12
    )
    assert set(got.losses) == {"upper_loss", "classic_loss"}


def test_each_rule_is_one_function_behind_the_solver() -> None:
    """The two iteration rules are separate functions; ``solve_cg`` and ``conjugate_gradient``
    dispatch to them by mode and give the same answer as calling them directly."""
    gen = torch.Generator().manual_seed(14)
    a = _spd(5, 0.5, 3.0, gen)
    b = (torch.randn(5, generator=gen, dtype=torch.float64),)
    mv = lambda d: (a @ d[0],)  # noqa: E731
    zero = (torch.zeros(5, dtype=torch.float64),)
    for mode, rule in (("exact", cg_exact), ("layerwise", cg_layerwise)):
        direct = rule(mv, zero, b, 3, 0.0)
        solved = solve_cg(mode, maxiter=3)(mv, b, None)
        assert direct.iterations == solved.iterations == 3
        assert torch.equal(direct.x[0], solved.x[0]) and direct.residuals == solved.residuals
    with pytest.raises(UserError, match="cg mode"):
        solve_cg("diagonal")
