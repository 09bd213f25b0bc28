"""SimCLR pre-training (a baseline of Table 1 and BiSSL's pretext stage).

SimCLR minimises NT-Xent between two augmented views of each image of a batch (no labels):
``L = −(1/2B) Σ_i log exp(z_i·z_j(i)/τ) / Σ_{k≠i} exp(z_i·z_k/τ)`` over the 2B views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bmssl.data import SSLViews
from bmssl.errors import UserError, check_choice, check_nonnegative, check_positive
from bmssl.losses import nt_xent
from bmssl.precision import autocast
from bmssl.pretrain import EncoderState, FewShotValidation, RunConfig
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
        self.views = SSLViews(
            config.augment, self.train_set.image_shape[1], self.train_set.image_shape[0]
        )
        self.optimizer = torch.optim.Adam(
            self.encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def train_step(self, step: int) -> dict[str, float]:
        n = len(self.train_set)
        idx = torch.randperm(n)[: min(self.config.batch_size, n)]
        images = self.train_set.get_batch(idx.numpy())
        v1, v2 = self.views.pair(images)
        self.encoder.train()
        with autocast(self.device, self.config.precision):
            z = self.encoder(torch.cat([v1, v2]).to(self.device, non_blocking=True))
            loss = nt_xent(z[: len(idx)].float(), z[len(idx) :].float(), self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}
