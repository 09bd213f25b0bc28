"""SimCLR pre-training (a baseline of Table 1 and BiSSL's pretext stage).

SimCLR minimises NT-Xent between two augmented views of each image of a batch (no labels):
``L = −(1/2B) Σ_i log exp(z_i·z_j(i)/τ) / Σ_{k≠i} exp(z_i·z_k/τ)`` over the 2B views.

Step ``t``'s batch (its images and both views' random parameters) is a pure function of
``(seed, t)``. Under ``torchrun`` every rank draws the same global batch and embeds its own
contiguous ``B/W`` images; negatives are gathered from every rank (gradients flow back through
the gather), BatchNorm normalises with the global batch's statistics
(:class:`~bmssl.distributed.GlobalBatchNorm`) and gradients are averaged, so W processes take
the step one process takes on the same batch (up to float rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bmssl import distributed
from bmssl.data import SSLViews
from bmssl.data.views import ViewParams
from bmssl.errors import UserError, check_choice, check_nonnegative, check_positive
from bmssl.losses import nt_xent
from bmssl.precision import autocast
from bmssl.pretrain import EncoderState, FewShotValidation, RunConfig, step_loader
from bmssl.trainer import Trainer


@dataclass
class SimCLRConfig(RunConfig):
    """SimCLR pre-training on a dataset's (few-shot) training split."""

    batch_size: int = 128
    temperature: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-6
    augment: str = "default"

    @property
    def views_per_step(self) -> int:
        return 2 * self.batch_size

    def validate(self) -> None:
        super().validate()
        from bmssl.data.views import STRENGTHS

        check_choice("augment", self.augment, STRENGTHS)
        for name in ("lr", "temperature", "batch_size"):
            check_positive(name, getattr(self, name))
        check_nonnegative("weight_decay", self.weight_decay)
        if self.batch_size < 2:
            raise UserError(
                f"batch_size must be at least 2 for contrastive pairs, got {self.batch_size}"
            )


class SimCLRTrainer(EncoderState, FewShotValidation, Trainer):
    """SimCLR with Adam; one step = one batch of ``batch_size`` images, two views each."""

    method = "simclr"
    data_parallel = True

    @property
    def nonfinite_hint(self) -> str:
        c = self.config
        return f"lower lr (now {c.lr}) or raise temperature (now {c.temperature})"

    def __init__(
        self, config: SimCLRConfig, out_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        config.validate()
        super().__init__(config, out_dir, progress)
        self.build_data_and_encoder()
        self.batch_size = min(config.batch_size, len(self.train_set))
        if self.batch_size % self.world:
            raise UserError(
                f"batch_size={self.batch_size} does not split evenly over {self.world} processes; "
                f"use a multiple of {self.world} (or another --nproc_per_node)"
            )
        if self.world > 1:
            distributed.global_batchnorm(self.encoder)
        self.views = SSLViews(
            config.augment, self.train_set.image_shape[1], self.train_set.image_shape[0]
        )
        self.optimizer = torch.optim.Adam(
            self.encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.plan = BatchPlan(config.seed, len(self.train_set), self.batch_size, self.rank,
                              self.world)  # fmt: skip

    def batch_indices(self, step: int) -> tuple[np.ndarray, torch.Generator]:
        """Step ``step``'s global batch: image indices ``[B]`` and the generator of its views'
        parameters (see :class:`BatchPlan`)."""
        indices, seed = self.plan.global_batch(step)
        return indices, torch.Generator().manual_seed(seed)

    def local_slice(self) -> slice:
        """This rank's contiguous block of the global batch."""
        return self.plan.local_slice

    def _images(self, step: int, indices: np.ndarray) -> torch.Tensor:
        """This rank's images of step ``step`` (``indices = self.plan(step)``), decoded ahead
        by the loader's workers (``config.workers``)."""
        if self.loader is None:
            self.loader = step_loader(self.config, self.train_set, self.plan, self.device)
        return self.loader.get(step)

    def local_views(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views ``[B/W, C, S, S]`` of this rank's images, on the training device.

        The parameters of all ``2B`` views are drawn as ``views.pair`` draws them for the
        global batch (rows ``0..B-1`` first views, ``B..2B-1`` second), then sliced.
        """
        indices, generator = self.batch_indices(step)
        mine = self.local_slice()
        images = self._images(step, indices[mine]).to(self.device, non_blocking=True)
        size = (images.shape[-2], images.shape[-1])
        params = self.views.sample_params(2 * self.batch_size, generator, size)
        local = torch.arange(mine.start, mine.stop)
        rows = torch.cat([local, local + self.batch_size])
        v1, v2 = self.views.apply(torch.cat([images, images]), take_rows(params, rows)).chunk(2)
        return v1, v2

    def train_step(self, step: int) -> dict[str, float]:
        v1, v2 = self.local_views(step)
        self.encoder.train()
        gather = self.world > 1
        with autocast(self.device, self.config.precision):
            z = self.encoder(torch.cat([v1, v2]))
            z = z.to(torch.promote_types(z.dtype, torch.float32))  # bf16 autocast -> float32
            b = len(v1)
            loss = nt_xent(z[:b], z[b:], self.config.temperature, gather=gather)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Each rank's gradient is W × its share of the global loss's (the gather's backward sums
        # over ranks), so the mean over ranks is the global gradient.
        distributed.average_gradients_(self.encoder.parameters())
        self.optimizer.step()
        loss = loss.detach().clone()
        distributed.all_reduce_mean_([loss])  # equal shards: the mean of the local means
        return {"loss": float(loss)}


@dataclass(frozen=True)
class BatchPlan:
    """Which images each step trains on: a pure, picklable function of ``(seed, step)``.

    ``global_batch(step)``: ``B`` distinct image indices and the seed of the views' generator,
    both from ``np.random.default_rng([seed, step])`` (the global RNG is untouched, so every rank
    and every resumed run draws the same batch); ``plan(step)``: this rank's block of them.
    """

    seed: int
    n_images: int
    batch_size: int
    rank: int = 0
    world: int = 1

    @property
    def local_slice(self) -> slice:
        return distributed.shard(self.batch_size, self.rank, self.world)

    def global_batch(self, step: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, step])
        indices = rng.choice(self.n_images, size=self.batch_size, replace=False)
        return indices, int(rng.integers(2**62))

    def __call__(self, step: int) -> np.ndarray:
        return self.global_batch(step)[0][self.local_slice]


def take_rows(params: ViewParams, rows: torch.Tensor) -> ViewParams:
    """The view parameters of rows ``rows`` (every field is a per-row tensor)."""
    return type(params)(
        **{f.name: getattr(params, f.name)[rows] for f in dataclasses.fields(params)}
    )
