"""BMSSL: bootstrapped meta self-supervised learning (docs/design.md, "BMSSL, as implemented here").

Per task (N images, K support and Q query views, pseudo-label = image index):

- inner loss ``L_sup(θ)``: a parameter-free prototype classifier on the support views
  (:func:`support_loss`); ``θ_L`` = L differentiable SGD steps of size α (``bmssl.inner``);
- target ``θ_T = sg(θ_{L+δ})``: δ more graph-free steps from ``θ_L`` (the last one on the query
  loss when ``bootstrap_query_step``); δ = 0 gives ``θ_T = sg(θ_L)``;
- meta-objective, mean over query views and tasks:
  ``KL(softmax(logits(θ_T)) || softmax(logits(θ_L))) + β · CE(logits(θ_L), labels)``, where
  ``logits(θ) = z_q(θ) · p_c(θ) / τ`` with prototypes from the support embeddings at the same θ;
- outer step: Adam on θ with the meta-gradient (second order through the L steps by default).

Under ``torchrun`` every rank samples the same meta-batch (a pure function of seed and step),
differentiates the tasks of its contiguous share ``b_r`` of the B, and the all-reduce of
``(|b_r|/B)·∇ mean_{b_r}`` is the mean over all B tasks; every rank then takes the same Adam step
and refreshes the running statistics from all B tasks (no-grad forwards, identical everywhere).

The functional core (``support_loss``, ``task_meta_loss``, ``meta_loss``, ``meta_gradient``) works
on parameter dicts; :class:`BMSSLTrainer` is the thin driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bmssl import distributed
from bmssl.data.views import STRENGTHS
from bmssl.errors import UserError, check_choice, check_nonnegative, check_positive
from bmssl.inner import BACKENDS, InnerLoop, Params, functional_twin, open_inner_loop
from bmssl.losses import kl_matching, nt_xent, prototype_logits
from bmssl.nets import Encoder
from bmssl.pretrain import EncoderState, FewShotValidation, RunConfig, step_loader
from bmssl.tasks import Task, TaskBatch, TaskSampler
from bmssl.trainer import Trainer

INNER_LOSSES = ("proto_loo", "proto", "ntxent")


@dataclass
class BMSSLConfig(RunConfig):
    """Every BMSSL setting: :class:`RunConfig`'s data, network, budget, validation, device and
    seed fields (two with BMSSL's own defaults), then the method's. The field defaults are the
    one place each default lives."""

    # "track": the meta-step normalises with batch statistics (a decomposed twin for torch.func,
    # see bmssl.inner) and the running statistics are refreshed from the support views after
    # each step, so evaluation uses them. "batch" keeps no running statistics: its features
    # then depend on how an evaluation set is batched (a class-ordered folder, one class per
    # batch, loses the class information; measured below random init).
    bn: str = "track"
    steps: int = 1000
    augment: str = "default"
    # task reconstruction (many images per task: the prototype loss contrasts N images)
    n_way: int = 32  # N images per task
    k_support: int = 2  # K support views per image
    q_query: int = 1  # Q query views per image
    meta_batch: int = 2  # B tasks per meta-batch
    # inner loop and bootstrap
    inner_steps: int = 1  # L
    bootstrap_steps: int = 1  # δ (0 = no-bootstrap ablation)
    bootstrap_query_step: bool = True  # last of the δ steps on the query loss
    inner_lr: float = 0.01  # α (also the step size of the bootstrap steps)
    inner_loss: str = "proto_loo"  # see support_loss
    beta: float = 0.5  # β, weight of the query cross-entropy at θ_L
    tau: float = 0.2  # τ, temperature of the prototype logits
    # outer loop
    outer_lr: float = 3e-3
    backend: str = "func"  # "func" | "higher"
    vmap: bool = True  # func backend only: vmap over the B tasks (higher always loops)
    first_order: bool = False

    @property
    def views_per_step(self) -> int:
        """B tasks × N images × (K + Q) views; the δ bootstrap steps reuse them."""
        return self.meta_batch * self.n_way * (self.k_support + self.q_query)

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad value and how to fix it."""
        super().validate()
        check_choice("augment", self.augment, STRENGTHS)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("inner_loss", self.inner_loss, INNER_LOSSES)
        for name in ("inner_lr", "outer_lr", "tau", "k_support", "q_query", "meta_batch"):
            check_positive(name, getattr(self, name))
        if self.n_way < 2:
            raise UserError(f"n_way must be at least 2 to classify, got {self.n_way}")
        for name in ("inner_steps", "bootstrap_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_nonnegative("beta", self.beta)
        if self.precision != "fp32":
            raise UserError(
                f"precision={self.precision} is not available for BMSSL: its meta-gradient "
                "differentiates through the inner steps, which float32 already rounds for long "
                "unrolls; use precision=fp32"
            )
        if self.bootstrap_steps == 0 and self.beta == 0:
            raise UserError(
                "bootstrap_steps=0 and beta=0 leave no meta-objective; "
                "set beta > 0 (the δ = 0 ablation) or bootstrap_steps >= 1"
            )
        if self.inner_loss == "proto_loo" and self.k_support < 2:
            raise UserError(
                f"inner_loss=proto_loo leaves one support view out and needs k_support >= 2, got "
                f"{self.k_support}; raise k_support or use inner_loss=proto"
            )
        if self.inner_loss == "ntxent" and self.k_support != 2:
            raise UserError(
                f"inner_loss=ntxent pairs two support views and needs k_support=2, got "
                f"{self.k_support}"
            )
        if self.num_train_images is not None and self.num_train_images < self.n_way:
            raise UserError(
                f"num_train_images={self.num_train_images} is below n_way={self.n_way}; a task "
                f"needs n_way distinct images"
            )


# -- task losses --------------------------------------------------------------------------------


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
        return loo_prototype_cross_entropy(z, task.n_way, tau)
    if kind == "proto":
        logits = prototype_logits(z, task.support_labels, z, task.n_way, tau)
        return F.cross_entropy(logits, task.support_labels)
    if kind == "ntxent":
        pairs = z.view(task.n_way, task.k_support, -1)
        return nt_xent(pairs[:, 0], pairs[:, 1], tau)
    raise UserError(f"unknown inner_loss {kind!r}; choose one of: {', '.join(INNER_LOSSES)}")


def query_logits(inner: InnerLoop, params: Params, task: Task, tau: float) -> torch.Tensor:
    """``[N·Q, N]`` cosine logits of the query views against support prototypes, both at params."""
    zs = inner.embed(params, task.support)
    zq = inner.embed(params, task.query)
    return prototype_logits(zs, task.support_labels, zq, task.n_way, tau)


def bootstrap_target(inner: InnerLoop, theta_l: Params, task: Task, config: BMSSLConfig) -> Params:
    """``θ_T = sg(θ_{L+δ})``: δ graph-free steps from ``sg(θ_L)``, the last on the query CE if
    ``bootstrap_query_step`` (as in Bootstrapped Meta-Learning)."""
    delta = config.bootstrap_steps
    if delta == 0:
        return {name: p.detach() for name, p in theta_l.items()}

    def sup(p: Params) -> torch.Tensor:
        return support_loss(inner.embed(p, task.support), task, config.inner_loss, config.tau)

    def qry(p: Params) -> torch.Tensor:
        return F.cross_entropy(query_logits(inner, p, task, config.tau), task.query_labels)

    on_query = 1 if config.bootstrap_query_step else 0
    target = inner.descend(theta_l, sup, delta - on_query)
    return inner.descend(target, qry, on_query)


class TaskLoss(NamedTuple):
    """Meta-objective of one task (or their mean) and its two terms."""

    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


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

    def sup(p: Params) -> torch.Tensor:
        return support_loss(inner.embed(p, task.support), task, config.inner_loss, config.tau)

    theta_l = inner.adapt(params, sup, config.inner_steps)
    logits = query_logits(inner, theta_l, task, config.tau)
    if target_logits is None:
        if config.bootstrap_steps == 0:
            target_logits = logits.detach()
        else:
            theta_t = bootstrap_target(inner, theta_l, task, config)
            target_logits = query_logits(inner, theta_t, task, config.tau).detach()
    kl = kl_matching(target_logits, logits)
    ce = F.cross_entropy(logits, task.query_labels)
    return TaskLoss(kl + config.beta * ce, kl, ce)


# -- meta-batch level: loss, target, gradient -----------------------------------------------------


class MetaGradient(NamedTuple):
    """Meta-gradient ``∂/∂θ`` of the mean task loss (dict like params) and the detached terms."""

    grads: Params
    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def model_for_backend(model: nn.Module, backend: str) -> nn.Module:
    """The module a backend runs: ``func`` needs decomposed BatchNorm (:func:`functional_twin`).

    A model without native BatchNorm (or an existing twin) is returned as is.
    """
    if backend == "func" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        return functional_twin(model)
    return model


def _task(batch: TaskBatch, support: torch.Tensor, query: torch.Tensor) -> Task:
    return Task(support, query, batch.n_way, batch.k_support, batch.q_query)


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

            def sup(q: Params, task: Task = task, inner: InnerLoop = inner) -> torch.Tensor:
                return support_loss(
                    inner.embed(q, task.support), task, config.inner_loss, config.tau
                )

            theta_l = inner.descend(p, sup, config.inner_steps)
            theta_t = bootstrap_target(inner, theta_l, task, config)
            out.append(_no_grad_logits(inner, theta_t, task, config.tau))
    return torch.stack(out)


def meta_gradient(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None = None,
) -> MetaGradient:
    """``∇_θ`` of the mean task meta-loss over the batch with the configured backend.

    ``func`` with ``vmap``: one ``torch.func.grad`` of ``vmap(task_meta_loss)`` over the B tasks;
    ``func`` without: ``torch.func.grad`` per task, averaged; ``higher``: autograd per task.
    ``targets [B, N·Q, N]`` optionally fixes the target logits. ``params`` are not modified; the
    returned grads are detached.
    """
    model = model_for_backend(model, config.backend)
    if config.backend == "higher":
        return _higher_gradient(params, model, batch, config, targets)
    return _func_gradient(params, model, batch, config, targets)


def _mean_terms(parts: list[TaskLoss]) -> TaskLoss:
    return TaskLoss(*(torch.stack(x).mean() for x in zip(*parts)))


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

            def mean_loss(p: Params) -> tuple[torch.Tensor, TaskLoss]:
                dims = (None, 0, 0, None if targets is None else 0)
                loss, terms = torch.func.vmap(one, in_dims=dims)(
                    p, batch.support, batch.query, targets
                )
                return loss.mean(), TaskLoss(*(x.mean() for x in terms))

            grads, terms = torch.func.grad(mean_loss, has_aux=True)(detached)
            return MetaGradient(grads, *terms)

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


def _higher_gradient(
    params: Params,
    model: nn.Module,
    batch: TaskBatch,
    config: BMSSLConfig,
    targets: torch.Tensor | None,
) -> MetaGradient:
    leaves = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in leaves.items()}
    parts = []
    for b, task in enumerate(batch.tasks()):
        t = None if targets is None else targets[b]
        # One innerloop_ctx per task, as higher intends; its graph is freed after each task.
        with open_inner_loop(model, "higher", config.inner_lr, config.first_order) as loop:
            out = task_meta_loss(loop, leaves, task, config, t)
            grads = torch.autograd.grad(out.loss / len(batch), list(leaves.values()))
        for name, g in zip(leaves, grads):
            total[name] += g
        parts.append(TaskLoss(*(x.detach() for x in out)))
    return MetaGradient(total, *_mean_terms(parts))


# -- driver -------------------------------------------------------------------------------------


class BMSSLTrainer(EncoderState, FewShotValidation, Trainer):
    """Meta-trains an :class:`Encoder` with BMSSL; validation = few-shot accuracy on "val".

    One step = one meta-batch of B reconstructed tasks and one Adam step on θ.
    """

    method = "bmssl"
    data_parallel = True

    @property
    def nonfinite_hint(self) -> str:
        c = self.config
        return (
            f"lower outer_lr (now {c.outer_lr}) or inner_lr (now {c.inner_lr}), or raise tau "
            f"(now {c.tau})"
        )

    def __init__(
        self, config: BMSSLConfig, out_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        config.validate()
        super().__init__(config, out_dir, progress)
        if config.meta_batch < self.world:
            raise UserError(
                f"meta_batch={config.meta_batch} gives some of the {self.world} processes no task; "
                f"raise meta_batch to at least {self.world} (or launch fewer processes)"
            )
        self.build_data_and_encoder()
        self.sampler = TaskSampler(
            self.train_set,
            config.n_way,
            config.k_support,
            config.q_query,
            config.meta_batch,
            config.augment,
            config.seed,
        )
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=config.outer_lr)
        # The func backend's twin shares the encoder's module tree but not its tensors; the
        # parameters are passed explicitly on every call, so it never goes stale.
        self._model = model_for_backend(self.encoder, config.backend)

    def train_step(self, step: int) -> dict[str, float]:
        # The views' parameters are drawn on the CPU from (seed, step) and applied on the
        # device, so a run repeats exactly whatever device makes them.
        if self.loader is None:
            self.loader = step_loader(
                self.config, self.sampler.dataset, self.sampler.image_indices, self.device
            )
        batch = self.sampler.sample(step, device=self.device, images=self.loader.get(step))
        mine = batch.select(distributed.shard(len(batch), self.rank, self.world))
        self.encoder.train()
        params: dict[str, torch.Tensor] = dict(self.encoder.named_parameters())
        result = meta_gradient(params, self._model, mine, self.config)
        grads = {name: result.grads[name].detach() for name in params}
        terms = torch.stack([result.loss, result.kl, result.ce]).detach().double()
        if self.world > 1:
            # Σ_r (|b_r|/B)·mean_{b_r} = mean over the B tasks: the mean over ranks of W·share.
            share = len(mine) * self.world / len(batch)
            for tensor in [*grads.values(), terms]:
                tensor.mul_(share)
            distributed.all_reduce_mean_([*grads.values(), terms])
        self.optimizer.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.grad = grads[name]
        self.optimizer.step()
        if self.config.bn == "track":
            self._refresh_running_stats(batch)
        loss, kl, ce = terms.tolist()
        return {"loss": loss, "kl": kl, "ce": ce}

    @torch.no_grad()
    def _refresh_running_stats(self, batch: TaskBatch) -> None:
        """bn="track": update θ's running statistics from the support views, task by task
        (the batches meta-training normalises with), since the meta-step itself never does."""
        self.encoder.train()
        for task in batch.tasks():
            self.encoder(task.support)


def train_bmssl(
    config: BMSSLConfig, out_dir: str | Path | None = None, progress: bool = True
) -> Encoder:
    """Meta-train with BMSSL (resuming from ``out_dir`` if it holds a checkpoint); the encoder."""
    trainer = BMSSLTrainer(config, out_dir, progress)
    trainer.fit()
    return trainer.encoder
