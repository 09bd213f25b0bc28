"""BMSSL's meta-batch level: the mean task meta-loss, its targets and its meta-gradient, by backend.

- ``func`` with ``vmap``: one ``torch.func.grad`` of ``vmap(task_meta_loss)`` over the B tasks
  (or over chunks of ``task_chunk`` tasks, the chunks' gradients summed with weights
  ``|chunk|/B``: peak memory in proportion to the chunk); ``func`` without: ``torch.func.grad``
  per task, averaged;
- ``higher``: autograd per task through ``higher.innerloop_ctx``;
- ``autograd``: autograd per task through ``functional_call`` (native BatchNorm kernels); the
  first of the δ bootstrap steps reuses the graph of the forward at ``θ_L`` that the meta-loss
  needs anyway (same values, one forward of the support and query views fewer per task).

Every backend computes the same meta-gradient (tested in float64 against each other and against
finite differences); ``params`` are never modified and the returned gradients are detached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bmssl.inner import (
    InnerLoop,
    Params,
    batch_statistics_twin,
    functional_twin,
    open_inner_loop,
)
from bmssl.losses import prototype_logits
from bmssl.meta_objective import (
    TaskLoss,
    bootstrap_target,
    meta_terms,
    query_logits,
    query_objective,
    support_loss,
    support_objective,
    task_meta_loss,
)
from bmssl.tasks import Task, TaskBatch

if TYPE_CHECKING:
    from bmssl.meta import BMSSLConfig


class MetaGradient(NamedTuple):
    """Meta-gradient ``∂/∂θ`` of the mean task loss (dict like params) and the detached terms."""

    grads: Params
    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def _has_batchnorm(model: nn.Module, tracking: bool = False) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.track_running_stats or not tracking)
        for m in model.modules()
    )


def model_for_backend(model: nn.Module, backend: str) -> nn.Module:
    """The module a backend runs: ``func`` needs decomposed BatchNorm (:func:`functional_twin`),
    ``autograd`` BatchNorm without running statistics (:func:`batch_statistics_twin`).

    A model that needs no twin (or an existing twin) is returned as is.
    """
    if backend == "func" and _has_batchnorm(model):
        return functional_twin(model)
    if backend == "autograd" and _has_batchnorm(model, tracking=True):
        return batch_statistics_twin(model)
    return model


def _task(batch: TaskBatch, support: torch.Tensor, query: torch.Tensor) -> Task:
    return Task(support, query, batch.task_images, batch.support_views, batch.query_views)


def _mean_terms(parts: list[TaskLoss]) -> TaskLoss:
    return TaskLoss(*(torch.stack(x).mean() for x in zip(*parts)))


def meta_loss(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None = None,
) -> TaskLoss:
    """Mean over tasks of :func:`task_meta_loss` (values; use :func:`meta_gradient` for grads).

    ``targets [B, N·Q, N]`` optionally fixes the target logits (e.g. to compare the
    meta-gradient with finite differences of this function).
    """
    model = model_for_backend(model, config.backend)
    terms = []
    for b, task in enumerate(batch.tasks()):
        target = None if targets is None else targets[b]
        with open_inner_loop(model, config.backend, config.inner_lr, config.first_order) as inner:
            terms.append(task_meta_loss(inner, params, task, config, target))
    return _mean_terms(terms)


@torch.no_grad()
def _no_grad_logits(inner: InnerLoop, params: Params, task: Task, tau: float) -> torch.Tensor:
    return query_logits(inner, params, task, tau)


def meta_targets(
    params: Params, model: nn.Module, batch: TaskBatch, config: BMSSLConfig
) -> torch.Tensor:
    """Target logits ``[B, N·Q, N]`` at ``θ_T`` of every task (as :func:`task_meta_loss` makes)."""
    model = model_for_backend(model, config.backend)
    out = []
    for task in batch.tasks():
        with open_inner_loop(model, config.backend, config.inner_lr, config.first_order) as inner:
            p = {n: v.detach() for n, v in params.items()}
            sup = support_objective(inner, task, config)
            theta_l = inner.descend(p, sup, config.inner_steps)
            theta_t = bootstrap_target(inner, theta_l, task, config)
            out.append(_no_grad_logits(inner, theta_t, task, config.temperature))
    return torch.stack(out)


def meta_gradient(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None = None,
) -> MetaGradient:
    """``∇_θ`` of the mean task meta-loss over the batch with the configured backend (see the
    module docstring). ``targets [B, N·Q, N]`` optionally fixes the target logits. ``params``
    are not modified; the returned grads are detached.
    """
    model = model_for_backend(model, config.backend)
    if config.backend == "func":
        return _func_gradient(params, model, batch, config, targets)
    return _per_task_gradient(params, model, batch, config, targets)


# -- func: torch.func.grad, vmapped over the tasks or their chunks ------------------------------


def _chunks(size: int, chunk: int) -> list[slice]:
    """``0..size`` in consecutive slices of ``chunk`` (one slice when ``chunk`` is 0 or ≥ size)."""
    if chunk <= 0 or chunk >= size:
        return [slice(0, size)]
    return [slice(i, min(i + chunk, size)) for i in range(0, size, chunk)]


def _func_gradient(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None,
) -> MetaGradient:
    detached = {n: p.detach() for n, p in params.items()}
    with open_inner_loop(model, "func", config.inner_lr, config.first_order) as loop:

        def one(
            p: Params, s: torch.Tensor, q: torch.Tensor, t: torch.Tensor | None
        ) -> tuple[torch.Tensor, TaskLoss]:
            out = task_meta_loss(loop, p, _task(batch, s, q), config, t)
            return out.loss, TaskLoss(*(x.detach() for x in out))

        if config.vmap:
            return _vmapped_gradient(one, detached, batch, config.task_chunk, targets)
        total = {n: torch.zeros_like(p) for n, p in detached.items()}
        parts = []
        for b in range(len(batch)):
            t = None if targets is None else targets[b]
            grads, terms = torch.func.grad(one, has_aux=True)(
                detached, batch.support[b], batch.query[b], t
            )
            for name, g in grads.items():
                total[name] += g / len(batch)
            parts.append(terms)
    return MetaGradient(total, *_mean_terms(parts))


def _vmapped_gradient(
    one, detached: Params, batch: TaskBatch, chunk: int, targets: torch.Tensor | None
) -> MetaGradient:
    """``torch.func.grad`` of the vmapped mean over each chunk of tasks, weighted and summed
    (one chunk: the plain vmapped gradient, with no reweighting)."""
    slices = _chunks(len(batch), chunk)
    total: Params = {}
    parts: list[TaskLoss] = []
    for part in slices:
        t = None if targets is None else targets[part]

        def mean_loss(
            p: Params, part: slice = part, t: torch.Tensor | None = t
        ) -> tuple[torch.Tensor, TaskLoss]:
            dims = (None, 0, 0, None if t is None else 0)
            loss, terms = torch.func.vmap(one, in_dims=dims)(
                p, batch.support[part], batch.query[part], t
            )
            return loss.mean(), TaskLoss(*(x.mean() for x in terms))

        grads, terms = torch.func.grad(mean_loss, has_aux=True)(detached)
        if len(slices) == 1:
            return MetaGradient(grads, *terms)
        weight = (part.stop - part.start) / len(batch)
        for name, g in grads.items():
            total[name] = total[name] + weight * g if name in total else weight * g
        parts.append(TaskLoss(*(weight * x for x in terms)))
    return MetaGradient(total, *(torch.stack(x).sum() for x in zip(*parts)))


# -- higher and autograd: one task at a time, gradients accumulated -----------------------------


def _reused_target(
    inner: InnerLoop,
    theta_l: Params,
    zs: torch.Tensor,
    logits: torch.Tensor,
    task: Task,
    config: BMSSLConfig,
) -> torch.Tensor:
    """:func:`bootstrap_target`'s logits, its first step's gradient taken through the graph of
    the forward at ``θ_L`` (support embeddings ``zs``, query ``logits``) instead of a new one."""
    on_query = 1 if config.bootstrap_query_step else 0
    support_steps = config.bootstrap_steps - on_query
    if support_steps == 0:
        first = F.cross_entropy(logits, task.query_labels)
    else:
        first = support_loss(zs, task, config.inner_loss, config.temperature)
    names = list(theta_l)
    grads = torch.autograd.grad(
        first, [theta_l[n] for n in names], retain_graph=True, allow_unused=True
    )
    theta = {
        n: theta_l[n].detach() - config.inner_lr * (0.0 if g is None else g.detach())
        for n, g in zip(names, grads)
    }
    theta = inner.descend(theta, support_objective(inner, task, config), max(0, support_steps - 1))
    if support_steps > 0 and on_query:
        theta = inner.descend(theta, query_objective(inner, task, config), 1)
    return _no_grad_logits(inner, theta, task, config.temperature)


def _autograd_task_loss(
    inner: InnerLoop, params: Params, task: Task, config: BMSSLConfig, target: torch.Tensor | None
) -> TaskLoss:
    """:func:`task_meta_loss` for the ``autograd`` backend, with :func:`_reused_target`."""
    theta_l = inner.adapt(params, support_objective(inner, task, config), config.inner_steps)
    zs = inner.embed(theta_l, task.support)
    zq = inner.embed(theta_l, task.query)
    logits = prototype_logits(zs, task.support_labels, zq, task.task_images, config.temperature)
    if target is None:
        if config.bootstrap_steps == 0:
            target = logits.detach()
        else:
            target = _reused_target(inner, theta_l, zs, logits, task, config)
    return meta_terms(logits, target, task, config)


def _per_task_gradient(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None,
) -> MetaGradient:
    """``higher`` or ``autograd``: each task's graph is built, differentiated and freed in
    turn (peak memory of one task), its gradient added with weight 1/B."""
    leaves = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in leaves.items()}
    parts = []
    task_loss = _autograd_task_loss if config.backend == "autograd" else task_meta_loss
    for b, task in enumerate(batch.tasks()):
        t = None if targets is None else targets[b]
        # One inner loop per task (higher's innerloop_ctx, as higher intends).
        with open_inner_loop(model, config.backend, config.inner_lr, config.first_order) as loop:
            out = task_loss(loop, leaves, task, config, t)
            grads = torch.autograd.grad(out.loss / len(batch), list(leaves.values()))
        for name, g in zip(leaves, grads):
            total[name] += g
        parts.append(TaskLoss(*(x.detach() for x in out)))
    return MetaGradient(total, *_mean_terms(parts))
