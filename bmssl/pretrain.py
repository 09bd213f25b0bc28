"""The shared substrate of every encoder pre-training method: the run config, the data and
encoder it describes, and few-shot validation.

:class:`RunConfig` holds the fields every method shares (data, network, budget, validation,
device, seed); :func:`load_split` and :func:`encoder_for` turn it into a dataset split and an
:class:`~bmssl.nets.Encoder`; :class:`FewShotValidation` gives a trainer its ``validate``
(few-shot accuracy of the backbone on the held-out "val" classes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bmssl.checkpoints import seed_everything
from bmssl.data import get_dataset
from bmssl.data.base import ImageDataset, SubsetByClass
from bmssl.data.loader import StepBatchLoader
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.evaluate import check_episode_shape, evaluate_fewshot
from bmssl.nets import BN_POLICIES, Encoder, backbone_names, build_encoder
from bmssl.precision import PRECISIONS, to_device

#: query images per class of a validation episode
VAL_QUERIES = 15


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
    log_every: int = 10  # steps per row of metrics.csv (losses averaged over the interval)
    train_protocol: str = "fewshot"  # "unlabeled": train on every image, no few-shot validation
    precision: str = "fp32"  # "bf16": autocast the forward pass of first-order steps
    workers: int = 0  # DataLoader worker processes decoding images (0 = in the main process)
    pin_memory: bool | None = None  # page-locked batches; None = when training on CUDA
    device: str = "auto"
    seed: int = 0
    tracker: str = "none"  # "tensorboard" or "mlflow": log the run there too (bmssl.tracking)
    tracking_uri: str | None = None  # MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)

    @property
    def views_per_step(self) -> int:
        """Augmented image views one training step consumes (the budget a table reports)."""
        return 0

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad value and how to fix it."""
        check_choice("backbone", self.backbone, backbone_names())
        check_choice("bn", self.bn, BN_POLICIES)
        check_choice("train_protocol", self.train_protocol, ("fewshot", "unlabeled"))
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("image_size", "width", "proj_hidden", "proj_dim", "steps", "eval_episodes"):
            check_positive(name, getattr(self, name))
        check_positive("eval_k_shot", self.eval_k_shot)
        if self.eval_n_way < 2:
            raise UserError(f"eval_n_way must be at least 2 to classify, got {self.eval_n_way}")
        check_positive("log_every", self.log_every)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise UserError(
                f"workers must be a whole number >= 0 (0 decodes images in the training process), "
                f"got {self.workers!r}"
            )
        if self.pin_memory not in (None, True, False):
            raise UserError(
                f"pin_memory must be true, false or null (null = when training on CUDA), got "
                f"{self.pin_memory!r}"
            )
        if self.eval_every < 0:
            raise UserError(f"eval_every must be >= 0 (0 = only at the end), got {self.eval_every}")
        from bmssl.tracking import check_tracker

        check_tracker(self.tracker, self.tracking_uri)


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
    """A config's dataset split, truncated to ``num_train_images`` for train.

    ``train_protocol="fewshot"`` (default): class-disjoint splits, the training classes for
    train; ``"unlabeled"``: the training split is every image of the source (a class tree or a
    flat folder of unlabelled images), for self-supervised pretext data; there is no val split.
    """
    protocol = getattr(config, "train_protocol", "fewshot")
    if protocol == "unlabeled" and split != "train":
        raise UserError(
            f"train_protocol=unlabeled pools every image for training and has no {split} split; "
            "use train_protocol=fewshot to evaluate on held-out classes"
        )
    data = get_dataset(
        config.dataset, config.data_root, split=split, protocol=protocol,
        image_size=config.image_size,
    )  # fmt: skip
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
    val_set: ImageDataset | None
    device: torch.device

    def build_data_and_encoder(self) -> None:
        """Load the train/val splits and the encoder sized for them, on ``self.device``; check
        that the val split holds the validation episodes before any training starts."""
        self.train_set = load_split(self.config, "train")
        self.val_set = None
        if self.config.train_protocol == "fewshot":
            self.val_set = load_split(self.config, "val")
            check_episode_shape(
                self.val_set, self.config.eval_n_way, self.config.eval_k_shot, VAL_QUERIES,
                names=("eval_n_way", "eval_k_shot", None),  # the query count is no option
            )  # fmt: skip
        self.encoder = to_device(encoder_for(self.train_set, self.config), self.device)

    def validate(self) -> dict[str, float]:
        if self.val_set is None:  # unlabeled pretext data: nothing held out to validate on
            return {"val_acc": float("nan")}
        result = evaluate_fewshot(
            self.encoder.backbone,
            self.val_set,
            n_way=self.config.eval_n_way,
            k_shot=self.config.eval_k_shot,
            n_query=VAL_QUERIES,
            episodes=self.config.eval_episodes,
            seed=self.config.seed,
            shard=True,  # every rank validates (Trainer.fit): each embeds its share of the set
        )
        return {"val_acc": result.mean, "val_ci95": result.ci95}


def step_loader(
    config: Any, dataset: ImageDataset, indices_for_step: Any, device: torch.device
) -> StepBatchLoader:
    """The prefetching loader of a trainer's per-step images (``config.workers`` processes;
    pinned memory when ``config.pin_memory``, or by default when training on CUDA)."""
    pin = config.pin_memory if config.pin_memory is not None else device.type == "cuda"
    return StepBatchLoader(dataset, indices_for_step, workers=config.workers, pin_memory=pin)


def random_init_encoder(config: Any) -> Encoder:
    """The untrained encoder a config describes, seeded by ``config.seed`` (the random-init row)."""
    seed_everything(int(config.seed))
    return encoder_for(load_split(config, "train"), config)


#: settings that may change when a run resumes (train longer, evaluate differently, move device,
#: load images otherwise)
RESUMABLE_CHANGES = frozenset(
    {"steps", "eval_every", "eval_episodes", "log_every", "device", "workers", "pin_memory",
     "tracker", "tracking_uri"}
)  # fmt: skip


class EncoderState:
    """Mixin: a trainer's resumable state is its encoder, its optimiser and its config.

    A resume under other settings (anything but :data:`RESUMABLE_CHANGES`) is refused, so a run
    folder never continues a model it does not describe.
    """

    config: Any
    encoder: Encoder
    optimizer: torch.optim.Optimizer
    out_dir: Any

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_settings(state.get("config", {}), self.config, self.out_dir)
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])

    def backbone(self) -> torch.nn.Module:
        return self.encoder.backbone

    @classmethod
    def backbone_from_state(cls, config: Any, state: dict[str, Any]) -> torch.nn.Module:
        """The backbone a saved :meth:`state_dict` holds, rebuilt for ``config``'s data."""
        encoder = encoder_for(load_split(config, "train"), config)
        encoder.load_state_dict(state["encoder"])
        return encoder.backbone


def check_same_settings(
    saved: dict[str, Any], config: Any, where: Any, free: frozenset[str] = RESUMABLE_CHANGES
) -> None:
    """Raise :class:`UserError` when ``config`` differs from the ``saved`` one in any option
    outside ``free`` (dotted names; ``"finetune.*"`` frees a whole section), naming each."""
    before, now = _flat(saved), _flat(dataclasses.asdict(config))

    def is_free(key: str) -> bool:
        return key in free or any(key.startswith(f[:-1]) for f in free if f.endswith(".*"))

    changed = sorted(k for k in before if not is_free(k) and before[k] != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {before[k]!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(
            f"the checkpoint in {where} was trained with other settings ({diffs}); "
            f"use a fresh --out directory or the original settings"
        )


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
