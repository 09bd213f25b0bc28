"""Downstream stages shared by the BiSSL trainer and pipeline: evaluation, linear-head warm-up on
a frozen backbone, and full fine-tuning.

Fine-tuning (the last stage of both the BiSSL and the baseline path) copies the backbone, warms up
a fresh linear head on frozen features, then trains backbone and head together with SGD
(momentum 0.9, cosine learning rate, weight decay, grad-norm clip) on the downstream train split.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from bissl.batches import BatchStream
from bissl.metrics import classification_metrics
from bissl.objectives import downstream_loss
from bissl.schedule import cosine_lambda
from bmssl.data import SSLViews
from bmssl.data.base import ImageDataset
from bmssl.errors import UserError
from bmssl.evaluate import embed_dataset
from bmssl.precision import autocast
from bmssl.trainer import resolve_device

if TYPE_CHECKING:
    from bissl.config import BiSSLConfig


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageDataset, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[N, K]`` of ``model`` (eval mode, restored afterwards) over the whole dataset."""
    was = model.training
    model.eval()
    try:
        return embed_dataset(model, dataset, batch_size)
    finally:
        model.train(was)


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 512) -> dict[str, float]:
    """``top1``, ``top5`` (and ``map11``/``map`` for multi-label sets), in percent.

    A dataset with a ``difficult_matrix`` (VOC) has those image-class pairs left out of the mAP.
    """
    logits = predict(model, dataset, batch_size)
    return classification_metrics(logits, dataset.labels(), dataset.difficult_matrix)


@torch.no_grad()
def evaluate_batch_stats(
    model: nn.Module, dataset: ImageDataset, batch_size: int = 512
) -> dict[str, float]:
    """:func:`evaluate` with BatchNorm normalising by each batch's statistics (train mode),
    running statistics untouched: how the model scores under the normalisation that a
    train-mode forward (e.g. BiSSL's upper level) sees. Modes are restored afterwards."""
    from bissl.objectives import frozen_bn_statistics

    # Batches in a fixed random order: a set stored in class order would otherwise give
    # one-class batches, whose statistics carry no class information.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    chunks = []
    was = model.training
    model.train()
    try:
        with frozen_bn_statistics(model):
            # equal chunks, so that no last batch of one image leaves BatchNorm undefined
            for idx in torch.tensor_split(order, -(-len(dataset) // batch_size)):
                chunks.append(model(dataset.get_batch(idx.numpy()).to(device)).float().cpu())
    finally:
        model.train(was)
    logits = torch.empty_like(torch.cat(chunks))
    logits[order] = torch.cat(chunks)
    return classification_metrics(logits, dataset.labels(), dataset.difficult_matrix)


def headline(metrics: dict[str, float], multilabel: bool) -> float:
    """The single number a search maximises: 11-point mAP for multi-label sets, else top-1."""
    return metrics["map11"] if multilabel else metrics["top1"]


def warmup_head(
    backbone: nn.Module,
    head: nn.Linear,
    dataset: ImageDataset,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train ``head`` in place on frozen, eval-mode features of ``backbone`` (Adam, ``steps``
    minibatches); only the head receives gradients. Returns the last minibatch loss."""
    if steps <= 0:
        return float("nan")
    feats = predict(backbone, dataset)
    device = next(head.parameters()).device
    feats, labels = feats.to(device), dataset.labels().to(device)
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


def finetune_model(
    backbone: nn.Module,
    config: BiSSLConfig,
    train_set: ImageDataset,
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> tuple[nn.Sequential, dict[str, float]]:
    """A copy of ``backbone`` with a fresh linear head, warmed up then fine-tuned on
    ``train_set`` (see the module docstring), and ``{"train_loss", "lr", "weight_decay"}``.

    Settings come from ``config.finetune`` and ``config.warmup``; ``lr``/``weight_decay``/``steps``/``seed``
    override them (what a lr/wd search varies). ``backbone`` is not modified.
    """
    settings = config.finetune
    lr = float(settings.lr if lr is None else lr)
    wd = float(settings.weight_decay if weight_decay is None else weight_decay)
    steps = int(settings.steps if steps is None else steps)
    seed = int(config.seed if seed is None else seed)
    if not (lr > 0 and math.isfinite(lr)) or not (wd >= 0 and math.isfinite(wd)) or steps < 0:
        raise UserError(
            f"fine-tune needs lr > 0, weight_decay >= 0, steps >= 0; got {lr}, {wd}, {steps}"
        )
    device = resolve_device(config.device)
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    out_dim: int = model.out_dim  # type: ignore[assignment]
    head = nn.Linear(int(out_dim), train_set.num_classes).to(device)
    bs = min(settings.batch_size, len(train_set))
    warmup_head(model, head, train_set, config.warmup.steps, config.warmup.lr, bs, seed)
    net = nn.Sequential(model, head)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps))
    stream = BatchStream(len(train_set), bs, seed=seed, stream=11)
    loss = _train(net, opt, sched, stream, train_set, config, steps, progress)
    return net, {"train_loss": loss, "lr": lr, "weight_decay": wd}


def _train(
    net: nn.Sequential,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    train_set: ImageDataset,
    config: BiSSLConfig,
    steps: int,
    progress: bool,
) -> float:
    """``steps`` SGD steps of ``net`` on augmented batches of ``stream``; the last loss."""
    settings, device = config.finetune, next(net.parameters()).device
    labels = train_set.labels()
    channels, size = train_set.image_shape[0], train_set.image_shape[-1]
    augment = SSLViews(settings.augment, size, channels)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="fine-tune", leave=False, dynamic_ncols=True)
    net.train()
    loss_value = float("nan")
    for step in range(steps):
        idx = stream.next()
        x = augment(train_set.get_batch(idx)).to(device)
        with autocast(device, settings.precision):
            logits = net(x).float()
        loss = downstream_loss(logits, labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), settings.clip)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise UserError(
                f"fine-tune loss became {loss_value} at step {step + 1}; lower finetune.lr "
                f"(now {opt.param_groups[0]['initial_lr']})"
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return loss_value


def split_metrics(
    net: nn.Module, config: BiSSLConfig, val_set: ImageDataset, test_set: ImageDataset | None
) -> dict[str, float]:
    """``val_*`` and (with ``test_set``) ``test_*`` metrics of ``net`` in percent; ``val_acc``
    the headline (top-1, or 11-point mAP for multi-label sets)."""
    val = evaluate(net, val_set, config.eval_batch_size)
    metrics = {f"val_{k}": v for k, v in val.items()}
    metrics["val_acc"] = headline(val, val_set.multilabel)
    if test_set is not None:
        test = evaluate(net, test_set, config.eval_batch_size)
        metrics.update({f"test_{k}": v for k, v in test.items()})
    return metrics


def finetune(
    backbone: nn.Module,
    config: BiSSLConfig,
    train_set: ImageDataset,
    val_set: ImageDataset,
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    test_set: ImageDataset | None = None,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """:func:`finetune_model`'s training record and :func:`split_metrics`: the metrics of a
    fine-tuned copy of ``backbone`` (which is not modified)."""
    net, metrics = finetune_model(
        backbone, config, train_set, lr, weight_decay, steps=steps, seed=seed, progress=progress
    )
    return {**metrics, **split_metrics(net, config, val_set, test_set)}
