"""Supervised prototypical network on the labelled training classes (an upper bound).

Each step draws an N-way K-shot episode of the training classes and minimises the
cross-entropy of the queries under the cosine prototype classifier ``z_q·p_c/τ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bmssl.errors import check_positive
from bmssl.losses import prototype_cross_entropy
from bmssl.precision import autocast
from bmssl.pretrain import EncoderState, FewShotValidation, RunConfig
from bmssl.trainer import Trainer


@dataclass
class ProtoNetConfig(RunConfig):
    """Supervised prototypical network on the labelled training classes (an upper bound)."""

    RENAMED: ClassVar[dict[str, str]] = {"tau": "temperature"}

    n_way: int = 20
    k_shot: int = 1
    n_query: int = 5
    temperature: float = 0.1
    lr: float = 1e-3

    @property
    def views_per_step(self) -> int:
        """Labelled images per episode (no augmentation)."""
        return self.n_way * (self.k_shot + self.n_query)

    def validate(self) -> None:
        super().validate()
        for name in ("lr", "temperature", "n_way", "k_shot", "n_query"):
            check_positive(name, getattr(self, name))


class ProtoNetTrainer(EncoderState, FewShotValidation, Trainer):
    """Episodic training of the backbone with the cosine prototype classifier."""

    method = "protonet"

    @property
    def nonfinite_hint(self) -> str:
        return (
            f"lower lr (now {self.config.lr}) or raise temperature (now {self.config.temperature})"
        )

    def __init__(
        self, config: ProtoNetConfig, out_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        config.validate()
        super().__init__(config, out_dir, progress)
        self.build_data_and_encoder()
        self.optimizer = torch.optim.Adam(self.encoder.backbone.parameters(), lr=config.lr)
        self.n_way = min(config.n_way, self.train_set.num_classes)
        from bmssl.evaluate import check_episode_shape

        check_episode_shape(self.train_set, self.n_way, config.k_shot, config.n_query)

    def train_step(self, step: int) -> dict[str, float]:
        from bmssl.evaluate import sample_episodes

        cfg = self.config
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # drawn from the checkpointed torch RNG
        (ep,) = sample_episodes(self.train_set, self.n_way, cfg.k_shot, cfg.n_query, 1, seed)
        self.encoder.train()
        images = self.train_set.get_batch(np.concatenate([ep.support, ep.query]))
        with autocast(self.device, cfg.precision):
            feats = self.encoder.backbone(images.to(self.device)).float()
        s = len(ep.support)
        loss = prototype_cross_entropy(
            feats[:s],
            torch.as_tensor(ep.support_labels, device=self.device),
            feats[s:],
            torch.as_tensor(ep.query_labels, device=self.device),
            self.n_way,
            cfg.temperature,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}
