"""BMSSL's task-level objective (docs/design.md, "BMSSL, as implemented here", steps 2-5).

Per task (N images, K support and Q query views, pseudo-label = image index):

- inner loss ``L_sup(θ)``: a parameter-free prototype classifier on the support views
  (:func:`support_loss`); ``θ_L`` = L differentiable SGD steps of size α (``bmssl.inner``);
- target ``θ_T = sg(θ_{L+δ})``: δ more graph-free steps from ``θ_L`` (the last one on the query
  loss when ``bootstrap_query_step``); δ = 0 gives ``θ_T = sg(θ_L)``;
- meta-objective: ``KL(softmax(logits(θ_T)) || softmax(logits(θ_L))) + β · CE(logits(θ_L))``,
  where ``logits(θ) = z_q(θ) · p_c(θ) / τ`` with prototypes from the support embeddings at θ.

Every function works on parameter dicts through an :class:`~bmssl.inner.InnerLoop`;
:mod:`bmssl.meta_backends` averages them over a meta-batch and differentiates them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from bmssl.errors import UserError
from bmssl.inner import InnerLoop, Params
from bmssl.losses import kl_matching, nt_xent, prototype_logits
from bmssl.tasks import Task

if TYPE_CHECKING:
    from bmssl.meta import BMSSLConfig

INNER_LOSSES = ("proto_loo", "proto", "ntxent")


def loo_prototype_cross_entropy(z: torch.Tensor, n_way: int, tau: float) -> torch.Tensor:
    """Leave-one-view-out prototype CE over class-major support embeddings ``z [N·K, D]``.

    View k of image c is scored against ``p_c^{-k}`` (normalised mean of its K−1 other views) and
    against ``p_{c'}`` (all K views) for the other images: ``CE([z·p / τ], c)``.
    """
    z = F.normalize(z, dim=-1)
    k = z.shape[0] // n_way
    views = z.view(n_way, k, -1)  # [N, K, D]
    sums = views.sum(1)  # [N, D]
    logits = torch.einsum("nkd,md->nkm", views, F.normalize(sums, dim=-1))  # [N, K, N]
    own = (views * F.normalize(sums.unsqueeze(1) - views, dim=-1)).sum(-1)  # [N, K]
    mine = torch.eye(n_way, dtype=torch.bool, device=z.device).unsqueeze(1)  # [N, 1, N]
    logits = torch.where(mine, own.unsqueeze(-1), logits) / tau
    labels = torch.arange(n_way, device=z.device).repeat_interleave(k)
    return F.cross_entropy(logits.reshape(n_way * k, n_way), labels)


def support_loss(z: torch.Tensor, task: Task, kind: str, tau: float) -> torch.Tensor:
    """The inner loss ``L_sup`` on support embeddings ``z [N·K, D]`` (class-major).

    - ``proto_loo``: :func:`loo_prototype_cross_entropy` (K ≥ 2; the default: no view sees
      itself in its own prototype);
    - ``proto``: prototype CE with prototypes from all K views, the view itself included;
    - ``ntxent``: NT-Xent between the two support views of each image (K = 2), temperature τ.
    """
    if kind == "proto_loo":
        return loo_prototype_cross_entropy(z, task.task_images, tau)
    if kind == "proto":
        logits = prototype_logits(z, task.support_labels, z, task.task_images, tau)
        return F.cross_entropy(logits, task.support_labels)
    if kind == "ntxent":
        pairs = z.view(task.task_images, task.support_views, -1)
        return nt_xent(pairs[:, 0], pairs[:, 1], tau)
    raise UserError(f"unknown inner_loss {kind!r}; choose one of: {', '.join(INNER_LOSSES)}")


def query_logits(inner: InnerLoop, params: Params, task: Task, tau: float) -> torch.Tensor:
    """``[N·Q, N]`` cosine logits of the query views against support prototypes, both at params."""
    zs = inner.embed(params, task.support)
    zq = inner.embed(params, task.query)
    return prototype_logits(zs, task.support_labels, zq, task.task_images, tau)


def support_objective(inner: InnerLoop, task: Task, config: BMSSLConfig):
    """``θ ↦ L_sup(θ)`` of ``task`` (the inner loss, as a function of the parameters)."""

    def sup(p: Params) -> torch.Tensor:
        return support_loss(
            inner.embed(p, task.support), task, config.inner_loss, config.temperature
        )

    return sup


def query_objective(inner: InnerLoop, task: Task, config: BMSSLConfig):
    """``θ ↦ CE(logits(θ), query labels)`` of ``task`` (the bootstrap's last step)."""

    def qry(p: Params) -> torch.Tensor:
        return F.cross_entropy(query_logits(inner, p, task, config.temperature), task.query_labels)

    return qry


def bootstrap_target(inner: InnerLoop, theta_l: Params, task: Task, config: BMSSLConfig) -> Params:
    """``θ_T = sg(θ_{L+δ})``: δ graph-free steps from ``sg(θ_L)``, the last on the query CE if
    ``bootstrap_query_step`` (as in Bootstrapped Meta-Learning)."""
    delta = config.bootstrap_steps
    if delta == 0:
        return {name: p.detach() for name, p in theta_l.items()}
    on_query = 1 if config.bootstrap_query_step else 0
    target = inner.descend(theta_l, support_objective(inner, task, config), delta - on_query)
    return inner.descend(target, query_objective(inner, task, config), on_query)


class TaskLoss(NamedTuple):
    """Meta-objective of one task (or their mean) and its two terms."""

    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def meta_terms(
    logits: torch.Tensor, target_logits: torch.Tensor, task: Task, config: BMSSLConfig
) -> TaskLoss:
    """``KL(softmax(target) || softmax(logits)) + β·CE(logits)`` and its two terms."""
    kl = kl_matching(target_logits, logits)
    ce = F.cross_entropy(logits, task.query_labels)
    return TaskLoss(kl + config.beta * ce, kl, ce)


def task_meta_loss(
    inner: InnerLoop,
    params: Params,
    task: Task,
    config: BMSSLConfig,
    target_logits: torch.Tensor | None = None,
) -> TaskLoss:
    """``KL(softmax(logits(θ_T)) || softmax(logits(θ_L))) + β·CE(logits(θ_L))`` for one task.

    ``θ_L`` depends on ``params`` through the L inner steps; ``θ_T`` (or the given
    ``target_logits [N·Q, N]``, held fixed) carries no gradient.
    """
    theta_l = inner.adapt(params, support_objective(inner, task, config), config.inner_steps)
    logits = query_logits(inner, theta_l, task, config.temperature)
    if target_logits is None:
        if config.bootstrap_steps == 0:
            target_logits = logits.detach()
        else:
            theta_t = bootstrap_target(inner, theta_l, task, config)
            target_logits = query_logits(inner, theta_t, task, config.temperature).detach()
    return meta_terms(logits, target_logits, task, config)
