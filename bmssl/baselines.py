"""Baselines: SimCLR pre-training, random initialisation and a supervised ProtoNet.

SimCLR minimises NT-Xent between two augmented views of each image of a batch (no labels).
ProtoNet (supervised upper bound) minimises the prototype cross-entropy of N-way K-shot episodes
drawn from the *labelled* training classes. Meta-SSL without bootstrap is BMSSL with δ = 0
(``bmssl.meta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bmssl.data import SSLViews, get_dataset
from bmssl.data.base import ImageDataset, SubsetByClass
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.evaluate import evaluate_fewshot
from bmssl.io import seed_everything
from bmssl.losses import nt_xent, prototype_cross_entropy
from bmssl.nets import BACKBONES, BN_POLICIES, Encoder, build_encoder
from bmssl.trainer import Trainer


@dataclass
class RunConfig:
    """Fields every encoder pre-training method shares: data, network, budget, validation, seed."""

    dataset: str = "glyphs"
    data_root: str | None = None
    image_size: int = 28
    backbone: str = "conv4"
    width: int = 32
    bn: str = "track"
    proj_hidden: int = 128
    proj_dim: int = 64
    steps: int = 300
    eval_every: int = 100
    eval_episodes: int = 200
    eval_n_way: int = 5
    eval_k_shot: int = 1
    num_train_images: int | None = None  # None = the whole training split
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad value and how to fix it."""
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("bn", self.bn, BN_POLICIES)
        for name in ("image_size", "width", "proj_hidden", "proj_dim", "steps", "eval_episodes"):
            check_positive(name, getattr(self, name))
        check_positive("eval_k_shot", self.eval_k_shot)
        if self.eval_n_way < 2:
            raise UserError(f"eval_n_way must be at least 2 to classify, got {self.eval_n_way}")
        if self.eval_every < 0:
            raise UserError(f"eval_every must be >= 0 (0 = only at the end), got {self.eval_every}")


@dataclass
class SimCLRConfig(RunConfig):
    """SimCLR pre-training on a dataset's (few-shot) training split."""

    batch_size: int = 128
    temperature: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-6
    augment: str = "default"

    def validate(self) -> None:
        super().validate()
        from bmssl.data.views import STRENGTHS

        check_choice("augment", self.augment, STRENGTHS)
        for name in ("lr", "temperature", "batch_size"):
            check_positive(name, getattr(self, name))
        if self.batch_size < 2:
            raise UserError(
                f"batch_size must be at least 2 for contrastive pairs, got {self.batch_size}"
            )


def encoder_for(dataset: ImageDataset, config: Any) -> Encoder:
    """Encoder sized for ``dataset``'s images from the shared config fields."""
    return build_encoder(
        backbone=config.backbone,
        in_channels=dataset.image_shape[0],
        image_size=dataset.image_shape[1],
        width=config.width,
        bn=config.bn,
        proj_hidden=config.proj_hidden,
        proj_dim=config.proj_dim,
    )


def load_split(config: Any, split: str) -> ImageDataset:
    """A config's dataset split (few-shot protocol), truncated to ``num_train_images`` for train."""
    data = get_dataset(config.dataset, config.data_root, split=split, image_size=config.image_size)
    limit = getattr(config, "num_train_images", None)
    if split == "train" and limit is not None:
        if limit < 1:
            raise UserError(f"num_train_images must be positive, got {limit}")
        # A seeded subset that keeps class balance irrelevant: SSL never sees labels.
        rng = np.random.default_rng(getattr(config, "seed", 0))
        keep = np.sort(rng.permutation(len(data))[: min(limit, len(data))])
        mask = np.zeros(len(data), dtype=bool)
        mask[keep] = True
        data = SubsetByClass(data, list(range(data.num_classes)), item_mask=mask)
    return data


class FewShotValidation:
    """Mixin: ``validate`` = few-shot accuracy of ``self.encoder.backbone`` on ``self.val_set``."""

    config: Any
    encoder: Encoder
    val_set: ImageDataset
    device: torch.device

    def build_data_and_encoder(self) -> None:
        """Load the train/val splits and the encoder sized for them, on ``self.device``."""
        self.train_set = load_split(self.config, "train")
        self.val_set = load_split(self.config, "val")
        self.encoder = encoder_for(self.train_set, self.config).to(self.device)

    def validate(self) -> dict[str, float]:
        result = evaluate_fewshot(
            self.encoder.backbone,
            self.val_set,
            n_way=self.config.eval_n_way,
            k_shot=self.config.eval_k_shot,
            episodes=self.config.eval_episodes,
            seed=self.config.seed,
        )
        return {"val_acc": result.mean, "val_ci95": result.ci95}


class SimCLRTrainer(FewShotValidation, Trainer):
    """SimCLR with Adam; one step = one batch of ``batch_size`` images, two views each."""

    method = "simclr"

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
        z = self.encoder(torch.cat([v1, v2]).to(self.device, non_blocking=True))
        loss = nt_xent(z[: len(idx)], z[len(idx) :], self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class ProtoNetConfig(RunConfig):
    """Supervised prototypical network on the labelled training classes (an upper bound)."""

    n_way: int = 20
    k_shot: int = 1
    n_query: int = 5
    tau: float = 0.1
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        for name in ("lr", "tau", "n_way", "k_shot", "n_query"):
            check_positive(name, getattr(self, name))


class ProtoNetTrainer(FewShotValidation, Trainer):
    """Episodic training of the backbone with the cosine prototype classifier."""

    method = "protonet"

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
        feats = self.encoder.backbone(images.to(self.device))
        s = len(ep.support)
        loss = prototype_cross_entropy(
            feats[:s],
            torch.as_tensor(ep.support_labels, device=self.device),
            feats[s:],
            torch.as_tensor(ep.query_labels, device=self.device),
            self.n_way,
            cfg.tau,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    state_dict = SimCLRTrainer.state_dict
    load_state_dict = SimCLRTrainer.load_state_dict


def random_init_encoder(config: Any) -> Encoder:
    """The untrained encoder a config describes, seeded by ``config.seed`` (the random-init row)."""
    seed_everything(int(config.seed))
    return encoder_for(load_split(config, "val"), config)
