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

This module holds the method's config and its driver (:class:`BMSSLTrainer`); the functional
core works on parameter dicts: the task-level objective in :mod:`bmssl.meta_objective`
(``support_loss``, ``task_meta_loss``), the meta-batch level by backend in
:mod:`bmssl.meta_backends` (``meta_loss``, ``meta_targets``, ``meta_gradient``); both are
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from bmssl import distributed
from bmssl.data.views import STRENGTHS
from bmssl.errors import UserError, check_choice, check_nonnegative, check_positive
from bmssl.inner import BACKENDS
from bmssl.meta_backends import (
    MetaGradient,
    meta_gradient,
    meta_loss,
    meta_targets,
    model_for_backend,
)
from bmssl.meta_objective import (
    INNER_LOSSES,
    TaskLoss,
    bootstrap_target,
    loo_prototype_cross_entropy,
    query_logits,
    support_loss,
    task_meta_loss,
)
from bmssl.nets import Encoder
from bmssl.pretrain import EncoderState, FewShotValidation, RunConfig, step_loader
from bmssl.tasks import TaskBatch, TaskSampler
from bmssl.trainer import Trainer

__all__ = [
    "INNER_LOSSES",
    "BMSSLConfig",
    "BMSSLTrainer",
    "MetaGradient",
    "TaskLoss",
    "bootstrap_target",
    "loo_prototype_cross_entropy",
    "meta_gradient",
    "meta_loss",
    "meta_targets",
    "model_for_backend",
    "query_logits",
    "support_loss",
    "task_meta_loss",
    "train_bmssl",
]


@dataclass
class BMSSLConfig(RunConfig):
    """Every BMSSL setting: :class:`RunConfig`'s data, network, budget, validation, device and
    seed fields (two with BMSSL's own defaults), then the method's. The field defaults are the
    one place each default lives."""

    #: options of earlier releases, refused with their new name
    RENAMED: ClassVar[dict[str, str]] = {
        "n_way": "task_images", "k_support": "support_views", "q_query": "query_views",
        "tau": "temperature",
    }  # fmt: skip

    # "track": the meta-step normalises with batch statistics (a decomposed twin for torch.func,
    # see bmssl.inner) and the running statistics are refreshed from the support views after
    # each step, so evaluation uses them. "batch" keeps no running statistics: its features
    # then depend on how an evaluation set is batched (a class-ordered folder, one class per
    # batch, loses the class information; measured below random init).
    bn: str = "track"
    steps: int = 1000
    augment: str = "default"
    # task reconstruction (many images per task: the prototype loss contrasts N images)
    task_images: int = 32  # N images per task
    support_views: int = 2  # K support views per image
    query_views: int = 1  # Q query views per image
    meta_batch: int = 2  # B tasks per meta-batch
    # inner loop and bootstrap
    inner_steps: int = 1  # L
    bootstrap_steps: int = 1  # δ (0 = no-bootstrap ablation)
    bootstrap_query_step: bool = True  # last of the δ steps on the query loss
    inner_lr: float = 0.01  # α (also the step size of the bootstrap steps)
    inner_loss: str = "proto_loo"  # see support_loss
    beta: float = 0.5  # β, weight of the query cross-entropy at θ_L
    temperature: float = 0.2  # τ, temperature of the prototype logits
    # outer loop
    outer_lr: float = 3e-3
    # "autograd" (per-task unroll on torch.autograd: fastest, least memory) | "func" | "higher"
    backend: str = "autograd"
    vmap: bool = True  # func backend only: vmap over the B tasks (higher, autograd loop)
    # func + vmap only: tasks per vmapped call, their gradients summed (0 = all B at once).
    # Peak memory falls in proportion; the meta-gradient is the same up to float rounding.
    task_chunk: int = 0
    first_order: bool = False

    @property
    def views_per_step(self) -> int:
        """B tasks × N images × (K + Q) views; the δ bootstrap steps reuse them."""
        return self.meta_batch * self.task_images * (self.support_views + self.query_views)

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad value and how to fix it."""
        super().validate()
        check_choice("augment", self.augment, STRENGTHS)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("inner_loss", self.inner_loss, INNER_LOSSES)
        for name in (
            "inner_lr",
            "outer_lr",
            "temperature",
            "support_views",
            "query_views",
            "meta_batch",
        ):
            check_positive(name, getattr(self, name))
        if self.task_images < 2:
            raise UserError(f"task_images must be at least 2 to classify, got {self.task_images}")
        for name in ("inner_steps", "bootstrap_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_nonnegative("beta", self.beta)
        check_nonnegative("task_chunk", self.task_chunk)
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
        if self.inner_loss == "proto_loo" and self.support_views < 2:
            raise UserError(
                f"inner_loss=proto_loo leaves one support view out and needs support_views >= 2, got "
                f"{self.support_views}; raise support_views or use inner_loss=proto"
            )
        if self.inner_loss == "ntxent" and self.support_views != 2:
            raise UserError(
                f"inner_loss=ntxent pairs two support views and needs support_views=2, got "
                f"{self.support_views}"
            )
        if self.num_train_images is not None and self.num_train_images < self.task_images:
            raise UserError(
                f"num_train_images={self.num_train_images} is below task_images={self.task_images}; a task "
                f"needs task_images distinct images"
            )


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
            f"lower outer_lr (now {c.outer_lr}) or inner_lr (now {c.inner_lr}), or raise temperature "
            f"(now {c.temperature})"
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
            config.task_images,
            config.support_views,
            config.query_views,
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
