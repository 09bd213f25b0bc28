"""Downstream building blocks shared by the BiSSL trainer and pipeline: prediction, evaluation,
linear-head warm-up on a frozen backbone, and full fine-tuning.

Fine-tuning (the last stage of both the BiSSL and the baseline path) copies the backbone, warms up
a fresh linear head on frozen features, then trains backbone and head together with SGD
(momentum 0.9, cosine learning rate, weight decay) on the downstream train split.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from bissl.data import BatchStream, get_images, is_multilabel, label_tensor, num_outputs
from bissl.metrics import classification_metrics
from bissl.objectives import downstream_loss
from bmssl.data import SSLViews
from bmssl.errors import UserError
from bmssl.trainer import resolve_device


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Any, batch_size: int = 512, device: str = "cpu"
) -> torch.Tensor:
    """Logits ``[N, K]`` of ``model`` (eval mode, restored afterwards) over the whole dataset."""
    was = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(dataset), batch_size):
            idx = np.arange(start, min(start + batch_size, len(dataset)))
            out.append(model(get_images(dataset, idx).to(device)).float().cpu())
        return torch.cat(out)
    finally:
        model.train(was)


def evaluate(
    model: nn.Module,
    dataset: Any,
    labels: torch.Tensor | None = None,
    batch_size: int = 512,
    device: str = "cpu",
) -> dict[str, float]:
    """``top1``, ``top5`` (and ``map11``/``map`` for multi-label sets), in percent.

    A dataset with a ``difficult_matrix`` (VOC) has those image-class pairs left out of the mAP.
    """
    labels = label_tensor(dataset) if labels is None else labels
    ignore = getattr(dataset, "difficult_matrix", None)
    return classification_metrics(predict(model, dataset, batch_size, device), labels, ignore)


def headline(metrics: dict[str, float], multilabel: bool) -> float:
    """The single number a search maximises: 11-point mAP for multi-label sets, else top-1."""
    return metrics["map11"] if multilabel else metrics["top1"]


def warmup_head(
    backbone: nn.Module,
    head: nn.Linear,
    dataset: Any,
    labels: torch.Tensor,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> float:
    """Train ``head`` in place on frozen, eval-mode features of ``backbone`` (Adam, ``steps``
    minibatches); only the head receives gradients. Returns the last minibatch loss."""
    if steps <= 0:
        return float("nan")
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            feats = torch.cat(
                [
                    backbone(
                        get_images(dataset, np.arange(s, min(s + 512, len(dataset)))).to(device)
                    )
                    for s in range(0, len(dataset), 512)
                ]
            )
    finally:
        backbone.train(was)
    labels = labels.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    stream = BatchStream(len(dataset), min(batch_size, len(dataset)), seed=seed, stream=7)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.as_tensor(stream.next())
        loss = downstream_loss(head(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def cosine_lambda(total: int, warmup: int = 0):
    """Multiplier of the base lr at step ``s``: linear warm-up over ``warmup`` steps, then cosine
    decay from 1 to 0 over the remaining ``total − warmup`` steps."""

    def factor(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / span)))

    return factor


def finetune(
    backbone: nn.Module,
    config: Any,
    train_set: Any,
    val_set: Any,
    lr: float | None = None,
    wd: float | None = None,
    *,
    test_set: Any | None = None,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Fine-tune a copy of ``backbone`` with a fresh linear head on ``train_set``; metrics on
    ``val_set`` (``val_*``) and ``test_set`` (``test_*``) in percent.

    ``config`` is a :class:`bissl.trainer.BiSSLConfig` (or any object with its fine-tune fields:
    ``finetune_steps``, ``finetune_lr``, ``finetune_wd``, ``finetune_batch_size``,
    ``head_warmup_steps``, ``head_warmup_lr``, ``downstream_augment``, ``clip``, ``device``,
    ``seed``); ``lr``/``wd``/``steps``/``seed`` override it (what a lr/wd search varies).
    ``val_acc`` is the headline (top-1, or 11-point mAP for multi-label sets). ``backbone`` is
    not modified.
    """
    lr = float(config.finetune_lr if lr is None else lr)
    wd = float(config.finetune_wd if wd is None else wd)
    steps = int(config.finetune_steps if steps is None else steps)
    seed = int(config.seed if seed is None else seed)
    if lr <= 0 or wd < 0 or steps < 0:
        raise UserError(f"fine-tune needs lr > 0, wd >= 0, steps >= 0; got {lr}, {wd}, {steps}")
    device = str(resolve_device(str(getattr(config, "device", "cpu"))))
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    out_dim: int = model.out_dim  # type: ignore[assignment]
    head = nn.Linear(int(out_dim), num_outputs(train_set)).to(device)
    labels = label_tensor(train_set)
    bs = min(int(config.finetune_batch_size), len(train_set))
    warmup_head(
        model, head, train_set, labels, int(config.head_warmup_steps),
        float(config.head_warmup_lr), bs, seed, device,
    )  # fmt: skip
    net = nn.Sequential(model, head)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps))
    channels = int(get_images(train_set, np.arange(1)).shape[1])
    size = int(get_images(train_set, np.arange(1)).shape[-1])
    augment = SSLViews(str(config.downstream_augment), size, channels)
    stream = BatchStream(len(train_set), bs, seed=seed, stream=11)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="fine-tune", leave=False, dynamic_ncols=True)
    net.train()
    loss_value = float("nan")
    for _ in range(steps):
        idx = stream.next()
        x = augment(get_images(train_set, idx)).to(device)
        loss = downstream_loss(net(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(config.clip))
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"fine-tune loss became {loss_value}; lower the lr ({lr})")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    multilabel = is_multilabel(train_set)
    metrics: dict[str, float] = {"train_loss": loss_value, "lr": lr, "wd": wd}
    bsz = int(getattr(config, "eval_batch_size", 512))
    val = evaluate(net, val_set, batch_size=bsz, device=device)
    metrics.update({f"val_{k}": v for k, v in val.items()})
    metrics["val_acc"] = headline(val, multilabel)
    if test_set is not None:
        test = evaluate(net, test_set, batch_size=bsz, device=device)
        metrics.update({f"test_{k}": v for k, v in test.items()})
    return metrics
