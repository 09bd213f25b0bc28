"""Jobs of the few-shot tables (Table 1, cross-domain): train or reload one model, then score it
on the few-shot cells of one or more evaluation sets.

A model is one (method, source dataset, seed); its run folder holds the trainer's checkpoints
and, once trained, ``backbone.pt`` (the backbone's plain ``state_dict``) with ``model.json``
(views seen, training seconds, validation curve). Every table that needs the model reads those
two files instead of training again, so Table 1 and the cross-domain table share their models
whichever runs first, and ``keep_checkpoints: false`` (which keeps ``backbone.pt``) still lets a
later table reuse them. Within a seed every method is scored on the same episodes of each set.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bmssl.data.base import ImageDataset
from bmssl.io import write_json
from reproduce.driver import CellRef

BACKBONE_FILE = "backbone.pt"
MODEL_RECORD = "model.json"


@dataclass(frozen=True)
class Evaluation:
    """The few-shot cells of one evaluation set: ``dataset`` read from ``root`` as ``split``
    (or every class, ``split="all"``), stored as cache column ``column``."""

    dataset: str
    root: str | None
    image_size: int
    split: str
    cells: tuple[tuple[int, int], ...]
    column: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class FewShotJob:
    """Train (or reload) ``method`` on its config's dataset with ``seed``, then evaluate each of
    ``evaluations`` on the seed's episodes. Picklable, so ``--jobs N`` can run it in a worker."""

    method: str
    seed: int
    config: Any
    run_dir: Path
    evaluations: tuple[Evaluation, ...]
    n_query: int
    episodes: int
    classifier: str
    threads: int | None
    progress: bool
    refs: tuple[CellRef, ...]
    cost: float

    @property
    def group(self) -> str:
        return str(self.run_dir)  # one model: never trained by two workers at once

    def describe(self) -> str:
        """``method on dataset, seedN``: the model this job trains or reloads (the progress bar)."""
        return f"{self.method} on {getattr(self.config, 'dataset', '?')}, seed{self.seed}"


def check_row_method(name: str) -> None:
    """A few-shot table row must give a backbone: trained by a trainer, or untrained."""
    from bmssl.errors import UserError
    from bmssl.methods import get_method

    method = get_method(name)  # an unknown name is one line listing the registered methods
    if method.kind == "runner":
        raise UserError(
            f"method {name!r} runs through a runner and gives metrics, not a backbone, so it "
            "cannot be a row of a few-shot table; choose a trained or untrained method"
        )


def trained_backbone(job: FewShotJob) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(backbone, record)`` of the job's model: reloaded from ``backbone.pt`` when the run
    folder holds it, else trained (or resumed) by the method's trainer and then stored there;
    untrained methods give their seeded random init (record: no views, no curve)."""
    from bmssl.checkpoints import load_weights, save_weights
    from bmssl.methods import get_method
    from bmssl.pretrain import random_init_encoder

    method = get_method(job.method)
    started = time.perf_counter()
    if method.kind == "untrained":
        backbone = method.untrained_backbone(job.config)
        return backbone, {"views_seen": 0, "train_s": time.perf_counter() - started, "curve": []}
    weights, record = job.run_dir / BACKBONE_FILE, job.run_dir / MODEL_RECORD
    if weights.is_file() and record.is_file():
        backbone = random_init_encoder(job.config).backbone
        backbone.load_state_dict(load_weights(weights))
        return backbone, json.loads(record.read_text())
    trainer = method.build_trainer(job.config, job.run_dir, job.progress)
    trainer.fit()
    backbone = trainer.backbone()
    per_step = job.config.views_per_step
    info = {
        "views_seen": int(job.config.steps * per_step),
        "train_s": time.perf_counter() - started,
        "curve": [[h["step"] * per_step, h["val_acc"]] for h in trainer.history if "val_acc" in h],
    }
    save_weights(weights, backbone.state_dict())
    write_json(record, info)
    return backbone, info


def load_evaluation_set(evaluation: Evaluation) -> ImageDataset:
    """The images an evaluation scores: its split, or every class with ``split="all"``."""
    from bmssl.data import get_dataset

    options = dict(evaluation.options)
    if evaluation.split == "all":
        return get_dataset(
            evaluation.dataset, evaluation.root, split="train", protocol="unlabeled",
            image_size=evaluation.image_size, **options,
        )  # fmt: skip
    return get_dataset(
        evaluation.dataset, evaluation.root, split=evaluation.split,
        image_size=evaluation.image_size, **options,
    )  # fmt: skip


def run_fewshot_job(job: FewShotJob) -> dict[tuple[str, str], dict[str, Any]]:
    """Every cell of the job: ``{(method, column): {"cells": [(n_way, k_shot, result)],
    "budget": {...}, "curve": [...], ...}}``."""
    import dataclasses

    from bmssl.evaluate import evaluate_fewshot

    if job.threads:
        torch.set_num_threads(job.threads)
    backbone, record = trained_backbone(job)
    budget = {"views_seen": record["views_seen"], "train_s": record["train_s"]}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    channels = input_channels(backbone)
    for evaluation in job.evaluations:
        images = load_evaluation_set(evaluation)
        evaluated, network = with_channels(images, channels), backbone
        if job.classifier != "finetune":
            # Every cell classifies the same frozen features: embed the set once, not per cell.
            evaluated, network = embedded_split(backbone, evaluated), torch.nn.Identity()
        results = []
        for n_way, k_shot in evaluation.cells:
            result = evaluate_fewshot(
                network, evaluated, n_way, k_shot, job.n_query, job.episodes, job.classifier,
                seed=job.seed,
            )  # fmt: skip
            results.append((n_way, k_shot, {**result.as_dict(), "accuracies": result.accuracies}))
        out[job.method, evaluation.column] = {
            "method": job.method, "dataset": evaluation.dataset, "seed": job.seed,
            "config": dataclasses.asdict(job.config), "cells": results, "budget": budget,
            "curve": record["curve"],
            "channels": {"set": int(images.image_shape[0]), "model": channels},
        }  # fmt: skip
    return out


def input_channels(backbone: torch.nn.Module) -> int | None:
    """The channels a network's first convolution takes (``None``: it has none to tell)."""
    first = next((m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


def with_channels(dataset: ImageDataset, channels: int | None) -> ImageDataset:
    """``dataset`` as ``channels``-channel images: grey repeated to RGB, or RGB to its luma
    (ITU-R BT.601, as PIL's ``convert("L")``), when a target's images differ from the source's;
    unchanged when they agree or ``channels`` is unknown."""
    if channels is None or dataset.image_shape[0] == channels:
        return dataset
    if {dataset.image_shape[0], channels} != {1, 3}:
        raise ValueError(f"cannot convert {dataset.image_shape[0]}-channel images to {channels}")
    return ChannelAdapted(dataset, channels)


class ChannelAdapted(ImageDataset):
    """Another dataset's images converted between 1 and 3 channels (see :func:`with_channels`)."""

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, base: ImageDataset, channels: int) -> None:
        self.base = base
        self.targets = list(base.targets)
        self.classes = list(base.classes)
        self.image_shape = (channels, *base.image_shape[1:])

    def _convert(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_shape[0] == 3:
            return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
        weights = torch.tensor(self.LUMA, dtype=images.dtype).view(3, 1, 1)
        return (images * weights).sum(dim=-3, keepdim=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image, label = self.base[index]
        return self._convert(image), label

    def get_batch(self, indices: Any) -> torch.Tensor:
        return self._convert(self.base.get_batch(indices))


def embedded_split(backbone: torch.nn.Module, split: ImageDataset) -> ImageDataset:
    """``split`` with its images replaced by ``backbone``'s eval-mode features, embedded once
    exactly as :func:`bmssl.evaluate.evaluate_fewshot` embeds a split (same batches), so the
    episodes of every cell score the same features it would compute."""
    from bmssl.evaluate import embed_dataset

    was_training = backbone.training
    backbone.eval()
    try:
        features = embed_dataset(backbone, split)
    finally:
        backbone.train(was_training)
    return EmbeddedSplit(features, list(split.targets), list(split.classes))


class EmbeddedSplit(ImageDataset):
    """A split's precomputed features, served as 1×1 'images' with the split's labels."""

    def __init__(self, features: torch.Tensor, targets: list[int], classes: list[str]) -> None:
        self.features = features
        self.targets = targets
        self.classes = classes
        self.image_shape = (int(features.shape[1]), 1, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.features[index], self.targets[index]

    def get_batch(self, indices: Any) -> torch.Tensor:
        return self.features[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
