"""The BMSSL meta-step (meta-gradient of B tasks): each of our backends against torchopt's
functional inner loop and against a learn2learn-style clone-and-update unroll, on one task batch.

Both peers compute the same objective (the LOO prototype inner loss, L differentiable SGD
steps, δ bootstrap steps with the last on the query loss, KL + β·CE at θ_L; the loss functions
are ours, the unrolling theirs), one task at a time, in the idiom of each library:

- ``torchopt``: ``torch.func.functional_call`` on the model, ``torchopt.sgd`` as a functional
  optimiser (``update`` / ``apply_updates`` with ``inplace=False``), gradients by
  ``torch.autograd.grad(create_graph=True)``, the meta-gradient by ``backward``;
- ``l2l-style``: learn2learn's ``clone_module`` / ``update_module`` idiom (learn2learn 0.2.0
  does not build on Python 3.11, so the two helpers are written here from its documented
  behaviour: a clone whose parameters are differentiable copies, updated in place by
  ``p - lr * g``), the meta-gradient by ``backward``.

Every side's meta-gradient is checked against our ``autograd`` backend in float64.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bmssl.losses import kl_matching, prototype_logits
from bmssl.meta_objective import loo_prototype_cross_entropy
from bmssl.tasks import Task, TaskBatch

Embed = Callable[[torch.Tensor], torch.Tensor]


def _logits(embed: Embed, task: Task, tau: float) -> torch.Tensor:
    zs, zq = embed(task.support), embed(task.query)
    return prototype_logits(zs, task.support_labels, zq, task.task_images, tau)


def _objective(cfg: Any) -> tuple[Callable, Callable]:
    def sup(embed: Embed, task: Task) -> torch.Tensor:
        return loo_prototype_cross_entropy(embed(task.support), task.task_images, cfg.temperature)

    def qry(embed: Embed, task: Task) -> torch.Tensor:
        return F.cross_entropy(_logits(embed, task, cfg.temperature), task.query_labels)

    return sup, qry


def _finish(logits: torch.Tensor, target: torch.Tensor, task: Task, cfg: Any, b: int) -> None:
    loss = kl_matching(target, logits) + cfg.beta * F.cross_entropy(logits, task.query_labels)
    (loss / b).backward()


# -- torchopt --------------------------------------------------------------------------------


def torchopt_step(model: nn.Module, batch: TaskBatch, cfg: Any) -> Callable[[], dict]:
    """torchopt's functional inner loop; returns ``run() -> {name: meta-gradient}``."""
    import torchopt

    names = [n for n, _ in model.named_parameters()]
    leaves = tuple(p for _, p in model.named_parameters())
    sup, qry = _objective(cfg)
    opt = torchopt.sgd(lr=cfg.inner_lr)

    def embedder(params: tuple) -> Embed:
        return lambda x: torch.func.functional_call(model, dict(zip(names, params)), (x,))

    def descend(params: tuple, loss_fn: Callable, task: Task, graph: bool) -> tuple:
        state = opt.init(params)
        grads = torch.autograd.grad(loss_fn(embedder(params), task), params, create_graph=graph)
        updates, state = opt.update(grads, state, inplace=False)
        return tuple(torchopt.apply_updates(params, updates, inplace=False))

    def target(theta_l: tuple, task: Task) -> torch.Tensor:
        theta = tuple(p.detach().requires_grad_() for p in theta_l)
        for step in range(cfg.bootstrap_steps):
            last = step == cfg.bootstrap_steps - 1 and cfg.bootstrap_query_step
            theta = descend(theta, qry if last else sup, task, graph=False)
            theta = tuple(p.detach().requires_grad_() for p in theta)
        with torch.no_grad():
            return _logits(embedder(theta), task, cfg.temperature)

    def run() -> dict:
        model.zero_grad(set_to_none=True)
        for task in batch.tasks():
            theta = leaves
            for _ in range(cfg.inner_steps):
                theta = descend(theta, sup, task, graph=not cfg.first_order)
            logits = _logits(embedder(theta), task, cfg.temperature)
            _finish(logits, target(theta, task), task, cfg, len(batch))
        return {n: p.grad for n, p in zip(names, leaves)}

    return run


# -- learn2learn-style clone and update ---------------------------------------------------------


def clone_module(module: nn.Module) -> nn.Module:
    """learn2learn's ``clone_module``: a shallow copy whose parameters are ``p.clone()`` (still
    differentiable with respect to the originals) and whose buffers are copies."""
    clone = copy.copy(module)
    clone._parameters = {k: None if p is None else p.clone() for k, p in module._parameters.items()}
    clone._buffers = {k: None if b is None else b.clone() for k, b in module._buffers.items()}
    clone._modules = {k: None if m is None else clone_module(m) for k, m in module._modules.items()}
    return clone


def _slots(module: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    for mod in module.modules():
        for key, p in mod._parameters.items():
            if p is not None:
                yield mod, key


def update_module(module: nn.Module, grads: tuple, lr: float, detach: bool = False) -> None:
    """learn2learn's ``update_module`` with SGD updates: every parameter ``p ← p − lr·g``."""
    for (mod, key), g in zip(_slots(module), grads, strict=True):
        new = mod._parameters[key] - lr * g
        mod._parameters[key] = new.detach().requires_grad_() if detach else new


def l2l_step(model: nn.Module, batch: TaskBatch, cfg: Any) -> Callable[[], dict]:
    """The clone-and-update unroll; returns ``run() -> {name: meta-gradient}``."""
    sup, qry = _objective(cfg)
    names = [n for n, _ in model.named_parameters()]

    def adapt(learner: nn.Module, loss_fn: Callable, task: Task, graph: bool, detach: bool):
        params = [mod._parameters[key] for mod, key in _slots(learner)]
        grads = torch.autograd.grad(loss_fn(learner, task), params, create_graph=graph)
        update_module(learner, grads, cfg.inner_lr, detach=detach)

    def target(learner: nn.Module, task: Task) -> torch.Tensor:
        frozen = clone_module(learner)
        for mod, key in _slots(frozen):
            mod._parameters[key] = mod._parameters[key].detach().requires_grad_()
        for step in range(cfg.bootstrap_steps):
            last = step == cfg.bootstrap_steps - 1 and cfg.bootstrap_query_step
            adapt(frozen, qry if last else sup, task, graph=False, detach=True)
        with torch.no_grad():
            return _logits(frozen, task, cfg.temperature)

    def run() -> dict:
        model.zero_grad(set_to_none=True)
        for task in batch.tasks():
            learner = clone_module(model)
            for _ in range(cfg.inner_steps):
                adapt(learner, sup, task, graph=not cfg.first_order, detach=False)
            _finish(
                _logits(learner, task, cfg.temperature),
                target(learner, task),
                task,
                cfg,
                len(batch),
            )
        return {n: p.grad for n, p in model.named_parameters()}

    assert names  # the model has parameters
    return run


# -- the side-by-side run -----------------------------------------------------------------------

#: our sides: name -> (backend, vmap, task_chunk)
OURS = {
    "func-vmap": ("func", True, 0),
    "func-vmap-chunk1": ("func", True, 1),
    "higher": ("higher", False, 0),
    "autograd": ("autograd", False, 0),
}
DEFAULT = "func-vmap"  # BMSSLConfig's default backend


def setup(args: Any, device: torch.device, dtype: torch.dtype = torch.float32):
    """The benchmark's config, encoder and task batch (bench_meta_step's: digits, B = 8,
    N = 10, K = Q = 2, δ = 1, Conv4 of ``args.width``)."""
    from bmssl.checkpoints import seed_everything
    from bmssl.meta import BMSSLConfig
    from bmssl.pretrain import encoder_for, load_split
    from bmssl.tasks import TaskSampler

    seed_everything(args.seed)
    cfg = BMSSLConfig(
        dataset="digits", width=args.width, task_images=args.task_images, support_views=2, query_views=2,
        meta_batch=args.tasks, bootstrap_steps=1, seed=args.seed,
    )  # fmt: skip
    cfg.validate()
    data = load_split(cfg, "train")
    encoder = encoder_for(data, cfg).train()
    sampler = TaskSampler(data, cfg.task_images, 2, 2, cfg.meta_batch, cfg.augment, args.seed)
    batch = sampler.sample(0)
    return cfg, encoder.to(device, dtype), batch.to(device, dtype)


def sides(encoder: nn.Module, batch: TaskBatch, cfg: Any, peers: list[str]) -> dict[str, Callable]:
    """``run() -> grads`` of every side for one config (ours by backend, then the peers)."""
    import dataclasses

    from bmssl.meta import meta_gradient, model_for_backend

    params = dict(encoder.named_parameters())
    out: dict[str, Callable] = {}
    for name, (backend, vmap, chunk) in OURS.items():
        c = dataclasses.replace(cfg, backend=backend, vmap=vmap, task_chunk=chunk)
        model = model_for_backend(encoder, backend)
        out[name] = lambda c=c, model=model: meta_gradient(params, model, batch, c).grads
    builders = {"torchopt": torchopt_step, "l2l-style": l2l_step}
    for name in peers:
        out[name] = builders[name](copy.deepcopy(encoder), batch, cfg)
    return out


def _max_rel(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in b.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


def float64_check(args: Any, cfg: Any, peers: list[str]) -> dict[str, float]:
    """Every side's meta-gradient against our ``autograd`` backend's, in float64."""
    _, encoder, batch = setup(args, torch.device("cpu"), torch.float64)
    fns = sides(encoder, batch, cfg, peers)
    reference = fns["autograd"]()
    return {name: _max_rel(fn(), reference) for name, fn in fns.items() if name != "autograd"}


def available_peers(row: dict[str, Any]) -> list[str]:
    """torchopt if it imports (else recorded as skipped); the l2l-style unroll always runs."""
    from benchmarks.peers import measure

    version, why = measure.peer_version("torchopt")
    row["versions"] = {"l2l-style": "written here (learn2learn 0.2.0 does not build on 3.11)"}
    row["skipped"] = {}
    if version is None:
        row["skipped"]["torchopt"] = why
        return ["l2l-style"]
    row["versions"]["torchopt"] = version
    return ["torchopt", "l2l-style"]


def run(args: Any, device: torch.device) -> list[dict[str, Any]]:
    """One row per (L, order), both orders of an L timed in one interleaved set: times, ratio
    of each peer to each of our backends, first/second-order time ratio, peak memory of every
    side, float64 gradient differences and our FLOPs."""
    import dataclasses

    from benchmarks.peers import measure

    base, encoder, batch = setup(args, device)
    rows = []
    for steps in args.inner_steps:
        fns: dict[str, Callable] = {}
        made = []
        for order in args.orders:
            cfg = dataclasses.replace(base, inner_steps=steps, first_order=order == "first")
            row: dict[str, Any] = {"path": "meta step", "L": steps, "order": order}
            row["case"] = (
                f"B={args.tasks} N={args.task_images} K=Q=2 conv4-{args.width} 28px, L={steps}, "
                f"{order} order"
            )
            peers = available_peers(row)
            print(f"  meta L={steps} {order}: float64 check, FLOPs, peak memory", flush=True)
            these = sides(encoder, batch, cfg, peers)
            fns.update({f"{name}/{order}": fn for name, fn in these.items()})
            row["grad_rel_diff_f64_vs_autograd"] = float64_check(args, cfg, peers)
            row["flops"] = measure.count_flops(these["autograd"])
            row["peak_mb"] = {name: measure.peak_mb(fn, device) for name, fn in these.items()}
            made.append((row, peers))
        print(f"  meta L={steps}: timing {len(fns)} sides x {args.repeats} rounds", flush=True)
        times = measure.interleaved(fns, args.repeats, args.clock, device)
        for row, peers in made:
            row.update(our_ratios(times, row["order"], peers))
            if "first" in args.orders and "second" in args.orders:
                row["first_over_second"] = {
                    ours: measure.ratio_stats(times[f"{ours}/first"], times[f"{ours}/second"])
                    for ours in [*OURS, *peers]
                }
            rows.append(row)
    return rows


def our_ratios(times: dict[str, list[float]], order: str, peers: list[str]) -> dict:
    """This order's times and the ratio of each peer to each of our backends."""
    from benchmarks.peers import measure

    mine = {name.split("/")[0]: t for name, t in times.items() if name.endswith(f"/{order}")}
    ratios = {ours: {p: measure.ratio_stats(mine[p], mine[ours]) for p in peers} for ours in OURS}
    return {"times_s": mine, "ratios_by_backend": ratios}


def profile_top(fn: Callable, top: int = 10) -> list[dict[str, Any]]:
    """The heaviest torch ops of one run of ``fn`` (self CPU time), for ``--profile``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [
        {"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
         "calls": e.count}
        for e in events
    ]  # fmt: skip


def profiles(args: Any, device: torch.device) -> dict[str, list[dict[str, Any]]]:
    """Top ops of our ``autograd`` backend and of each peer at the first L, second order."""
    import dataclasses

    base, encoder, batch = setup(args, device)
    cfg = dataclasses.replace(base, inner_steps=args.inner_steps[0])
    row: dict[str, Any] = {}
    fns = sides(encoder, batch, cfg, available_peers(row))
    return {name: profile_top(fns[name]) for name in ("autograd", "func-vmap", *row["versions"])}
