"""BiSSL's upper step: our implicit gradient (``bissl``: one first-order graph reused by every
Hessian-vector product, exact CG) against torchopt's implicit differentiation
(``torchopt.diff.implicit.custom_root`` with ``torchopt.linear_solve.solve_cg``) and betty's
conjugate-gradient hypergradient (``betty.hypergradient.cg.cg``), on one problem.

The problem: θ_P a Conv4 backbone with a fixed projector, the lower objective NT-Xent(θ_P) on a
pretext pair plus ``λ'/2 ||θ_P − θ_D||²`` with ``λ' = λ + λ_damp``, the upper loss
CE(head(backbone_{θ_P}(x)), y) (γ = 0). Its implicit gradient for θ_D is
``(I + H/λ')⁻¹ ∇_θP CE``, which every side computes with 5 CG iterations from 0 (torchopt and
betty solve ``(H + λ'I) u = ∇CE`` and multiply by ``λ'``: the same iterates in exact
arithmetic). betty's routine needs Problem objects: two small adapters stand in for them and
expose only what it calls (``training_step_exec``, ``trainable_parameters``, ``config``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bmssl.losses import nt_xent

Tensors = tuple[torch.Tensor, ...]


class Problem:
    """What a side needs: the two models' tensors, the data and the constants."""

    def __init__(self, encoder, model_d, x, y, x1, x2, lam: float, damp: float, iters: int):
        self.encoder, self.model_d = encoder, model_d
        self.x, self.y, self.x1, self.x2 = x, y, x1, x2
        self.lam, self.damp, self.iters = lam, damp, iters
        self.twin = copy.deepcopy(encoder)
        torch.func.replace_all_batch_norm_modules_(self.twin)  # batch statistics, no buffers
        self.names = [f"backbone.{n}" for n, _ in encoder.backbone.named_parameters()]
        self.fixed = {f"projector.{n}": p.detach() for n, p in encoder.projector.named_parameters()}

    def pretext(self, theta: Tensors) -> torch.Tensor:
        params = dict(zip(self.names, theta, strict=True)) | self.fixed
        z = functional_call(self.twin, params, (torch.cat([self.x1, self.x2]),), strict=False)
        return nt_xent(z[: len(self.x1)], z[len(self.x1) :], 0.5)

    def lower(self, theta_p: Tensors, theta_d: Tensors) -> torch.Tensor:
        prox = sum((p - d).pow(2).sum() for p, d in zip(theta_p, theta_d, strict=True))
        return self.pretext(theta_p) + 0.5 * (self.lam + self.damp) * prox

    def upper(self, theta_p: Tensors) -> torch.Tensor:
        backbone = {n.removeprefix("backbone."): t for n, t in zip(self.names, theta_p)}
        features = functional_call(self.twin.backbone, backbone, (self.x,))
        return F.cross_entropy(self.model_d.head(features), self.y)

    def theta_p(self) -> Tensors:
        return tuple(p.detach().requires_grad_() for p in self.encoder.backbone.parameters())

    def theta_d(self) -> Tensors:
        return tuple(self.model_d.backbone.parameters())


def torchopt_side(pb: Problem) -> Callable[[], Tensors]:
    """torchopt: the lower solution wrapped by ``custom_root``; ``backward`` runs its CG."""
    import torchopt

    def optimality(theta_p: Tensors, theta_d: Tensors) -> Tensors:
        return tuple(torch.func.grad(pb.lower)(theta_p, theta_d))

    solve = torchopt.linear_solve.solve_cg(maxiter=pb.iters, rtol=0.0)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def solution(init: Tensors, theta_d: Tensors) -> Tensors:
        return init  # the lower level's current iterate, taken as its solution

    def run() -> Tensors:
        theta_d = pb.theta_d()
        head = tuple(pb.model_d.head.parameters())
        theta_star = solution(pb.theta_p(), theta_d)
        return torch.autograd.grad(pb.upper(tuple(theta_star)), theta_d + head)

    return run


def betty_side(pb: Problem) -> Callable[[], Tensors]:
    """betty: ``cg(v, lower, upper)`` with adapters for its two Problem objects."""
    from betty.hypergradient.cg import cg

    class Config:
        cg_iterations = pb.iters
        cg_alpha = 1.0

    class Level:
        paths: list = []
        config = Config()
        cur_batch = None

        def __init__(self, params: Tensors, loss: Callable[[], torch.Tensor] | None) -> None:
            self.params, self.loss = params, loss

        def training_step_exec(self, batch: Any) -> torch.Tensor:
            assert self.loss is not None
            return self.loss()

        def trainable_parameters(self) -> Tensors:
            return self.params

        parameters = trainable_parameters

    def run() -> Tensors:
        theta_p, theta_d = pb.theta_p(), pb.theta_d()
        head = tuple(pb.model_d.head.parameters())
        grads = torch.autograd.grad(pb.upper(theta_p), theta_p + head)
        lower = Level(theta_p, lambda: pb.lower(theta_p, theta_d))
        implicit = cg(list(grads[: len(theta_p)]), lower, Level(theta_d, None))
        return tuple(implicit) + tuple(grads[len(theta_p) :])

    return run


def build_problem(args: Any, device: torch.device) -> Problem:
    """A Conv4 (width ``args.width``) on 28-px digits: downstream batch ``args.upper_batch``
    with its labels, a pretext pair of ``affine`` views of the same images."""
    import numpy as np

    from bissl.objectives import DownstreamModel
    from bmssl.data import SSLViews, get_dataset
    from bmssl.nets import build_encoder

    torch.manual_seed(args.seed)
    data = get_dataset("digits", split="train", image_size=28)
    idx = np.arange(args.upper_batch)
    x = data.get_batch(idx).to(device)
    y = torch.as_tensor(np.asarray(data.targets)[idx]).to(device)
    x1, x2 = SSLViews("affine", 28, 1).pair(x, torch.Generator().manual_seed(args.seed))
    encoder = build_encoder("conv4", 1, 28, args.width, "track").to(device).train()
    model_d = DownstreamModel(copy.deepcopy(encoder.backbone), 10).to(device).train()
    return Problem(encoder, model_d, x, y, x1, x2, 1e-3, args.lam_damp, args.cg_iters)


def ours_side(pb: Problem, mode: str = "exact") -> Callable[[], Tensors]:
    """Our upper step (``bissl.upper.upper_gradients``, or ``bissl.hypergrad``'s in older
    trees): ``mode`` CG (exact or layerwise), ``cg_iters`` iterations, reused first-order
    graph, γ = 0."""
    try:
        from bissl.upper import upper_gradients
    except ImportError:
        return _ours_hypergrad(pb, mode)
    from bissl.config import BiSSLConfig

    config = BiSSLConfig()
    config.bilevel.lam, config.bilevel.lam_damp, config.bilevel.gamma = pb.lam, pb.damp, 0.0
    config.cg.iters, config.cg.mode, config.cg.rtol, config.cg.hvp_backend = (
        pb.iters, mode, 0.0, "reuse",
    )  # fmt: skip
    config.pretext.temperature = 0.5

    def run() -> Tensors:
        config.bilevel.lam_damp = pb.damp
        out = upper_gradients(pb.encoder, pb.model_d, (pb.x, pb.y), (pb.x1, pb.x2), config)
        pb.breakdown = getattr(getattr(out, "cg", None), "breakdown", None)
        return tuple(out.backbone) + tuple(out.head)

    return run


def positive_definite_damping(pb: Problem, ours, tries: int = 12) -> float:
    """Double λ_damp from its start until our exact CG runs every iteration without meeting
    non-positive curvature (the NT-Xent Hessian is indefinite; below its most negative
    eigenvalue the damped system is not positive definite and CG sides cannot agree)."""
    for _ in range(tries):
        ours()
        if getattr(pb, "breakdown", None) is None:
            return pb.damp
        pb.damp *= 2
    return pb.damp


def _ours_hypergrad(pb: Problem, mode: str) -> Callable[[], Tensors]:
    from bissl.hypergrad import CGSettings, upper_gradients  # type: ignore[import-not-found]

    settings = CGSettings(maxiter=pb.iters, mode=mode, backend="reuse")

    def run() -> Tensors:
        out = upper_gradients(
            pb.encoder, pb.model_d, pb.x, pb.y, pb.x1, pb.x2, lam=pb.lam, lam_damp=pb.damp,
            gamma=0.0, temperature=0.5, settings=settings,
        )  # fmt: skip
        return tuple(out.backbone) + tuple(out.head)

    return run


def rel_diff(a: Tensors, b: Tensors) -> float:
    """``||a − b|| / ||b||`` over the concatenations."""
    fa = torch.cat([t.reshape(-1) for t in a]).double()
    fb = torch.cat([t.reshape(-1) for t in b]).double()
    return float((fa - fb).norm() / fb.norm())


def run(args: Any, device: torch.device) -> list[dict[str, Any]]:
    """One row: our upper step against torchopt's and betty's, ratios, memory, gradient diffs."""
    from benchmarks.peers import measure
    from benchmarks.peers.views import side_by_side

    pb = build_problem(args, device)
    fns: dict[str, measure.Fn] = {"ours": ours_side(pb)}
    damp = positive_definite_damping(pb, fns["ours"])
    row: dict[str, Any] = {
        "path": "bissl upper step",
        "case": f"conv4-{args.width} 28px batch {args.upper_batch}, {args.cg_iters} CG iters, "
        f"lam_damp {damp:g}",
        "versions": {},
        "skipped": {},
        "grad_rel_diff_vs_ours": {},
    }
    reference = fns["ours"]()
    row["cg_breakdown"] = getattr(pb, "breakdown", None)
    for name, module, dist, side in (
        ("torchopt", "torchopt", None, torchopt_side),
        ("betty", "betty", "betty-ml", betty_side),
    ):
        version, why = measure.peer_version(module, dist)
        if version is None:
            row["skipped"][name] = why
            continue
        fns[name] = side(pb)
        row["versions"][name] = version
        row["grad_rel_diff_vs_ours"][name] = rel_diff(fns[name](), reference)
    row["flops"] = measure.count_flops(fns["ours"])
    row.update(side_by_side(fns, args, device))
    return [row]
