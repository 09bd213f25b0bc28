"""Cost and convergence of BiSSL's hypergradient, in one process, on a SimCLR-pre-trained Conv4.

1. One upper step (``bissl.upper.upper_gradients``, 5 exact CG iterations) with the
   first-order graph built once and reused by every Hessian-vector product, against the public
   code's approach (forward + first-order + second-order pass per CG iteration), against a plain
   downstream step (CE forward + backward of head_D∘backbone_D). Gradients of the two upper
   steps are compared.
2. Cost of one Hessian-vector product over one pretext gradient (reuse / recompute / torch.func).
3. CG relative residual against iterations, exact and layerwise, on the damped system
   (I + H/(λ + λ_damp)) x = v with the paper's λ_damp and with a λ_damp above the most negative
   curvature (the NT-Xent Hessian is indefinite; its extreme eigenvalues are estimated by
   Lanczos, scipy's eigsh on the HVP operator).

Times are medians of ``--repeats`` runs after a warm-up (the CPU may be shared).

    python benchmarks/bench_hypergrad.py             # Conv4 width 32, 28×28, batch 64
    python benchmarks/bench_hypergrad.py --quick     # smoke run

Writes ``benchmarks/results/bench_hypergrad.json`` (git-ignored) and prints the ratios.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bissl.cg import conjugate_gradient  # noqa: E402
from bissl.config import BiSSLConfig  # noqa: E402
from bissl.downstream import load_downstream  # noqa: E402
from bissl.hvp import HessianVectorProduct, damped_operator  # noqa: E402
from bissl.objectives import (  # noqa: E402
    DownstreamModel,
    downstream_loss,
    frozen_bn_statistics,
    pretext_loss_of_backbone,
)
from bissl.stages import pretext_encoder  # noqa: E402
from bissl.trees import flatten, unflatten  # noqa: E402
from bissl.upper import upper_gradients  # noqa: E402
from bmssl.checkpoints import seed_everything  # noqa: E402
from bmssl.config import config_from_dict  # noqa: E402
from bmssl.data import SSLViews  # noqa: E402
from bmssl.errors import UserError, cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402
from bmssl.pretrain import load_split  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def run_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of ``repeats`` runs of ``fn`` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` (the CPU may be shared: the median resists outliers)."""
    return statistics.median(run_times(fn, repeats))


def extreme_eigenvalues(
    hvp: HessianVectorProduct, like: tuple[torch.Tensor, ...]
) -> tuple[float, float]:
    """(smallest, largest) eigenvalue of the Hessian behind ``hvp`` (Lanczos, scipy eigsh)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = sum(t.numel() for t in like)

    def mv(v: np.ndarray) -> np.ndarray:
        vec = torch.from_numpy(np.asarray(v, dtype=np.float32).ravel())
        return flatten(hvp(unflatten(vec, like))).double().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    lo = eigsh(op, k=1, which="SA", tol=1e-2, return_eigenvectors=False)
    hi = eigsh(op, k=1, which="LA", tol=1e-2, return_eigenvectors=False)
    return float(lo[0]), float(hi[0])


def first_reaching(history: list[float], tol: float) -> int | None:
    """First iteration whose relative residual is <= ``tol`` (None if never)."""
    return next((k for k, r in enumerate(history) if r <= tol), None)


def stall_point(history: list[float]) -> dict[str, float]:
    """Iteration of the smallest relative residual and that residual."""
    k = int(np.argmin(history))
    return {"best_iteration": k, "best_rel_residual": history[k], "final_rel_residual": history[-1]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="downstream and pretext batch")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="SimCLR steps first")
    parser.add_argument("--cg-iters", type=int, default=5)
    parser.add_argument("--max-iters", type=int, default=30, help="residual-curve length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--out", default=str(OUT / "bench_hypergrad.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.pretrain_steps, args.repeats, args.max_iters = 8, 16, 20, 2, 10
    for name in ("width", "batch", "cg_iters", "max_iters", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    return args


@dataclass
class Problem:
    """One upper step's inputs: the pre-trained encoder (θ_P), model_D, a downstream batch
    ``(x, y)``, a pretext pair and the pretext loss ``f(θ)`` of the backbone."""

    cfg: BiSSLConfig
    encoder: Any
    model_d: DownstreamModel
    batch: tuple[torch.Tensor, torch.Tensor]
    pair: tuple[torch.Tensor, torch.Tensor]
    theta: tuple[torch.Tensor, ...]
    f: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]

    def config(self, lam_damp: float, iters: int, backend: str) -> BiSSLConfig:
        """The config of an upper step: γ = 0, CG without tolerance, this damping and backend."""
        values = {
            "bilevel.lam_damp": lam_damp, "bilevel.gamma": 0.0, "cg.iters": iters,
            "cg.rtol": 0.0, "cg.hvp_backend": backend,
        }  # fmt: skip
        return config_from_dict(BiSSLConfig, values, base=self.cfg)

    def upper(self, lam_damp: float, iters: int, backend: str) -> Any:
        """One call of :func:`bissl.upper.upper_gradients`."""
        cfg = self.config(lam_damp, iters, backend)
        return upper_gradients(self.encoder, self.model_d, self.batch, self.pair, cfg)


def build_problem(args: argparse.Namespace) -> Problem:
    """A SimCLR-pre-trained Conv4 (cached), model_D on a copy of its backbone, and batches."""
    cfg = config_from_dict(
        BiSSLConfig,
        {"pretext.width": args.width, "pretext.steps": args.pretrain_steps,
         "pretext.batch_size": args.batch},
    )  # fmt: skip
    print(
        f"SimCLR pre-training: Conv4 width {args.width}, {args.pretrain_steps} steps",
        file=sys.stderr,
    )
    encoder, _ = pretext_encoder(cfg, None, OUT / "cache", progress=False)
    encoder.train()
    train = load_downstream(cfg.dataset, None, "train", cfg.image_size)
    model_d = DownstreamModel(copy.deepcopy(encoder.backbone), len(train.classes)).train()
    idx = np.arange(args.batch)
    x = train.get_batch(idx)
    y = torch.as_tensor(np.asarray(train.targets)[idx])
    pretext = load_split(cfg.pretext_run(), "train")
    x1, x2 = SSLViews(cfg.pretext.augment, cfg.image_size, 1).pair(pretext.get_batch(idx))
    f = pretext_loss_of_backbone(encoder, x1, x2, cfg.pretext.temperature)
    theta = tuple(encoder.backbone.parameters())
    return Problem(cfg, encoder, model_d, (x, y), (x1, x2), theta, f)


def curvature(p: Problem) -> tuple[float, float, float]:
    """The Hessian's extreme eigenvalues and a λ_damp above the most negative one (the damped
    system is positive definite only there)."""
    with frozen_bn_statistics(p.encoder):
        lo, hi = extreme_eigenvalues(HessianVectorProduct(p.f, p.theta, "reuse"), p.theta)
    return lo, hi, max(p.cfg.bilevel.lam_damp, float(np.ceil(2.0 * max(0.0, -lo))))


def bench_upper_step(p: Problem, args: argparse.Namespace, damp: float) -> dict[str, Any]:
    """Upper step: reuse vs recompute vs a plain downstream step, and the speed-up by CG
    iterations (it grows with them towards (build + HVP) / HVP)."""
    g_reuse, g_rec = (
        p.upper(damp, args.cg_iters, "reuse"),
        p.upper(damp, args.cg_iters, "recompute"),
    )
    ref = flatten(g_rec.backbone + g_rec.head)
    grad_rel_diff = float((flatten(g_reuse.backbone + g_reuse.head) - ref).norm() / ref.norm())
    t_reuse = median_time(lambda: p.upper(damp, args.cg_iters, "reuse"), args.repeats)
    t_recompute = median_time(lambda: p.upper(damp, args.cg_iters, "recompute"), args.repeats)
    sweep = {}
    for iters in (args.cg_iters, 2 * args.cg_iters, 4 * args.cg_iters):
        a = run_times(lambda: p.upper(damp, iters, "reuse"), max(2, args.repeats // 2))  # noqa: B023
        b = run_times(lambda: p.upper(damp, iters, "recompute"), max(2, args.repeats // 2))  # noqa: B023
        sweep[str(iters)] = {
            "speedup_median": statistics.median(b) / statistics.median(a),
            "speedup_min": min(b) / min(a),
        }
    x, y = p.batch

    def plain_step() -> None:
        p.model_d.zero_grad(set_to_none=True)
        downstream_loss(p.model_d(x), y).backward()

    t_plain = median_time(plain_step, args.repeats)
    return {
        "cg_iterations": [g_reuse.cg.iterations, g_rec.cg.iterations],
        "lam_damp": damp,
        "seconds_reuse": t_reuse,
        "seconds_recompute": t_recompute,
        "seconds_plain_downstream_step": t_plain,
        "speedup_reuse_over_recompute": t_recompute / t_reuse,
        "reuse_over_plain": t_reuse / t_plain,
        "grad_rel_diff_reuse_vs_recompute": grad_rel_diff,
        "speedup_by_cg_iterations": sweep,
    }


def bench_hvp(p: Problem, args: argparse.Namespace) -> dict[str, float]:
    """One Hessian-vector product over one pretext gradient, for each backend."""
    v = tuple(torch.randn_like(t) for t in p.theta)
    t_grad = median_time(lambda: torch.autograd.grad(p.f(p.theta), p.theta), args.repeats)
    with frozen_bn_statistics(p.encoder):
        reuse_op = HessianVectorProduct(p.f, p.theta, "reuse")
        t_hvp_reuse = median_time(lambda: reuse_op(v), args.repeats)
        t_build = median_time(
            lambda: HessianVectorProduct(p.f, p.theta, "reuse").release(), args.repeats
        )
        rec_op = HessianVectorProduct(p.f, p.theta, "recompute")
        t_hvp_rec = median_time(lambda: rec_op(v), args.repeats)
    func_enc = copy.deepcopy(p.encoder)
    torch.func.replace_all_batch_norm_modules_(func_enc)
    f_func = pretext_loss_of_backbone(func_enc, *p.pair, p.cfg.pretext.temperature)
    func_op = HessianVectorProduct(f_func, tuple(func_enc.backbone.parameters()), "func")
    t_hvp_func = median_time(lambda: func_op(v), args.repeats)
    return {
        "seconds_gradient": t_grad,
        "seconds_first_order_build": t_build,
        "hvp_over_gradient_reuse": t_hvp_reuse / t_grad,
        "hvp_over_gradient_recompute": t_hvp_rec / t_grad,
        "hvp_over_gradient_func": t_hvp_func / t_grad,
    }


def cg_curves(p: Problem, args: argparse.Namespace, damp_pd: float) -> dict[str, Any]:
    """CG relative residual against iterations, exact and layerwise, at the config's λ_damp and
    at ``damp_pd``, on v = ∇_θP CE(head_D(backbone_P(x)), y)."""
    x, y = p.batch
    rhs = torch.autograd.grad(downstream_loss(p.model_d.head(p.encoder.backbone(x)), y), p.theta)
    lam = p.cfg.bilevel.lam
    curves: dict[str, Any] = {}
    with frozen_bn_statistics(p.encoder):
        op = HessianVectorProduct(p.f, p.theta, "reuse")
        for damp in sorted({p.cfg.bilevel.lam_damp, damp_pd}):
            for mode in ("exact", "layerwise"):
                res = conjugate_gradient(
                    damped_operator(op, 1.0 / (lam + damp)), rhs, maxiter=args.max_iters,
                    rtol=1e-6 if mode == "exact" else 0.0, mode=mode, check_residual=True,
                )  # fmt: skip
                curves[f"{mode}@lam_damp={damp:g}"] = {
                    "lam_damp": damp,
                    "mode": mode,
                    "rel_residuals": res.history_rel,
                    "iterations": res.iterations,
                    "reached_1e-6_at": first_reaching(res.history_rel, 1e-6),
                    "true_rel_residual": (res.true_residual or 0.0) / res.b_norm,
                    "breakdown": res.breakdown,
                    **stall_point(res.history_rel),
                }
    return curves


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The ratios, in words."""
    setup, eig = results["setup"], results["hessian_eigenvalues"]
    u, h, sweep = (
        results["upper_step"],
        results["hvp"],
        results["upper_step"]["speedup_by_cg_iterations"],
    )
    lo, hi = eig["min"], eig["max"]
    print(f"\nConv4 width {args.width}, {setup['parameters']} backbone parameters, batch "
          f"{args.batch}, {args.threads} thread(s); H eigenvalues in [{lo:.3g}, {hi:.3g}]")  # fmt: skip
    print(f"upper step, {args.cg_iters} CG iterations (ran {u['cg_iterations']}), "
          f"λ_damp={u['lam_damp']:g}:")  # fmt: skip
    print(f"  reuse {u['seconds_reuse'] * 1e3:.1f} ms | recompute {u['seconds_recompute'] * 1e3:.1f} "
          f"ms | plain downstream step {u['seconds_plain_downstream_step'] * 1e3:.1f} ms")  # fmt: skip
    print(f"  speed-up reuse/recompute: {u['speedup_reuse_over_recompute']:.2f}x  (reuse = "
          f"{u['reuse_over_plain']:.1f}x a plain step); gradient rel. diff "
          f"{u['grad_rel_diff_reuse_vs_recompute']:.1e}")  # fmt: skip
    print(
        "  speed-up by CG iterations (median / min of runs): "
        + ", ".join(
            f"{k}: {v['speedup_median']:.2f}/{v['speedup_min']:.2f}x" for k, v in sweep.items()
        )
    )
    print(f"HVP / gradient: reuse {h['hvp_over_gradient_reuse']:.2f}, recompute "
          f"{h['hvp_over_gradient_recompute']:.2f}, torch.func {h['hvp_over_gradient_func']:.2f}")  # fmt: skip
    print("CG relative residual (iteration: value):")
    for name, c in results["cg"].items():
        pts = ", ".join(
            f"{k}:{r:.1e}"
            for k, r in enumerate(c["rel_residuals"])
            if k in (0, 1, 2, 5, 10, 20, 30) or k == len(c["rel_residuals"]) - 1
        )
        extra = f"; reached 1e-6 at {c['reached_1e-6_at']}" if c["mode"] == "exact" else ""
        stop = f"; stopped: {c['breakdown']}" if c["breakdown"] else ""
        print(
            f"  {name:26s} {pts}{extra}; best {c['best_rel_residual']:.1e} at {c['best_iteration']}{stop}"
        )


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(0)
    p = build_problem(args)
    n_params = sum(t.numel() for t in p.theta)
    lo, hi, damp_pd = curvature(p)
    print(f"Hessian: {n_params} parameters, eigenvalues in [{lo:.3g}, {hi:.3g}]; "
          f"λ_damp for a positive definite system: {damp_pd:g}", file=sys.stderr)  # fmt: skip
    results = {
        "setup": {
            "backbone": "conv4",
            "width": args.width,
            "image_size": p.cfg.image_size,
            "batch": args.batch,
            "parameters": n_params,
            "pretrain_steps": args.pretrain_steps,
            "threads": args.threads,
            "lam": p.cfg.bilevel.lam,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },  # fmt: skip
        "hessian_eigenvalues": {"min": lo, "max": hi, "lam_damp_pd": damp_pd},
        "upper_step": bench_upper_step(p, args, damp_pd),
        "hvp": bench_hvp(p, args),
        "cg": cg_curves(p, args, damp_pd),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print_report(results, args)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
