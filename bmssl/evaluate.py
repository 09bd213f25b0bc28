"""Few-shot evaluation of a frozen encoder on held-out classes, with 95% confidence intervals.

An episode draws N classes, K support and Q query images of each; a classifier fitted on the
support features predicts the queries. Accuracy is reported as
``mean ± 1.96·std/sqrt(episodes)`` over episodes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bmssl.data.base import ImageDataset
from bmssl.errors import UserError, check_choice, check_positive

CLASSIFIERS = ("proto", "logreg", "finetune")


@dataclass
class EvalConfig:
    """Settings of a few-shot evaluation (``python -m bmssl eval``)."""

    split: str = "test"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes: int = 2000
    classifier: str = "proto"
    seed: int = 0

    def validate(self) -> None:
        check_choice("split", self.split, ("train", "val", "test"))
        check_choice("classifier", self.classifier, CLASSIFIERS)
        for name in ("n_way", "k_shot", "n_query", "episodes"):
            check_positive(name, getattr(self, name))


@dataclass(frozen=True)
class Episode:
    """Item indices ``support [N·K]``, ``query [N·Q]`` and their episode labels ``0..N-1``."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


@dataclass
class FewShotResult:
    """Mean accuracy (in %) with its 95% half-width over ``episodes`` episodes."""

    mean: float
    ci95: float
    episodes: int
    accuracies: list[float] = field(repr=False, default_factory=list)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}"

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.ci95, "episodes": self.episodes}


def mean_ci95(accuracies: np.ndarray | list[float]) -> tuple[float, float]:
    """``(mean, 1.96·std/sqrt(n))`` of per-episode accuracies (population std, as is customary)."""
    acc = np.asarray(accuracies, dtype=np.float64)
    return float(acc.mean()), float(1.96 * acc.std() / math.sqrt(len(acc)))


def check_episode_shape(
    dataset: ImageDataset,
    n_way: int,
    k_shot: int,
    n_query: int,
    names: tuple[str, str, str | None] = ("n_way", "k_shot", "n_query"),
) -> list[np.ndarray]:
    """Raise a :class:`UserError` if ``dataset`` cannot supply N-way K-shot Q-query episodes.

    ``names`` are the options the user set these with (e.g. ``eval_n_way``), so the message
    names the real option; a ``None`` query name is a fixed count no option sets.
    """
    way, shot, query = names
    for name, value in ((way, n_way), (shot, k_shot), (query or "n_query", n_query)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    by_class = dataset.indices_by_class()
    if len(by_class) < 2:
        raise UserError(
            f"this split has {len(by_class)} class(es); few-shot episodes need at least 2, so "
            "the dataset needs more classes"
        )
    if n_way > len(by_class):
        raise UserError(
            f"{way}={n_way} is larger than the {len(by_class)} held-out classes of this split; "
            f"use {way} <= {len(by_class)}"
        )
    eligible = [idx for idx in by_class if len(idx) >= k_shot + n_query]
    if len(eligible) < n_way:
        smallest = min(len(idx) for idx in by_class)
        queries = f"{query}={n_query}" if query else f"{n_query} queries"
        fix = f"lower {shot} or {query}" if query else (
            f"lower {shot}, or use a dataset with {k_shot + n_query} images in {n_way} classes"
        )  # fmt: skip
        raise UserError(
            f"{shot}={k_shot} plus {queries} needs {k_shot + n_query} images per class but "
            f"only {len(eligible)} classes have that many (the smallest has {smallest}); {fix}"
        )
    return by_class


def sample_episodes(
    dataset: ImageDataset,
    n_way: int,
    k_shot: int,
    n_query: int = 15,
    episodes: int = 2000,
    seed: int = 0,
) -> list[Episode]:
    """Seeded N-way K-shot episodes over classes with at least ``k_shot + n_query`` images."""
    by_class = check_episode_shape(dataset, n_way, k_shot, n_query)
    eligible = [c for c, idx in enumerate(by_class) if len(idx) >= k_shot + n_query]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        classes = rng.choice(eligible, size=n_way, replace=False)
        support, query = [], []
        for c in classes:
            picked = rng.choice(by_class[c], size=k_shot + n_query, replace=False)
            support.append(picked[:k_shot])
            query.append(picked[k_shot:])
        out.append(
            Episode(
                support=np.concatenate(support),
                support_labels=np.repeat(np.arange(n_way), k_shot),
                query=np.concatenate(query),
                query_labels=np.repeat(np.arange(n_way), n_query),
            )
        )
    return out


@torch.no_grad()
def embed_dataset(
    features: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    batch_size: int = 512,
    shard: bool = False,
) -> torch.Tensor:
    """Features ``[len(dataset), F]`` (on the CPU) of every image, computed once in batches.

    A network whose BatchNorm keeps no running statistics (``bn: batch``) normalises each batch
    with its own statistics, so its features depend on how the set is batched (a folder in
    class order gives one class per batch and loses the class information): it is warned about.

    ``shard``: every rank of a ``torchrun`` group calls this with the same network; rank ``r``
    embeds batches ``r, r + W, …`` and the ranks exchange them. The batches are those of one
    process, so are the features, in 1/W of the time (a no-op in one process).
    """
    from bmssl import distributed

    warn_batch_statistics(features)
    device = module_device(features)
    world, rank = (distributed.world_size(), distributed.rank()) if shard else (1, 0)
    starts = range(0, len(dataset), batch_size)
    chunks: dict[int, torch.Tensor] = {}
    for start in starts[rank::world]:
        idx = np.arange(start, min(start + batch_size, len(dataset)))
        chunks[start] = features(dataset.get_batch(idx).to(device)).float().cpu()
    if world > 1:
        shares: list[dict[int, torch.Tensor] | None] = [None] * world
        torch.distributed.all_gather_object(shares, chunks)
        for share in shares:
            chunks.update(share or {})
    return torch.cat([chunks[start] for start in starts])


def warn_batch_statistics(module: object) -> None:
    """Warn once per module when its BatchNorm normalises eval batches with their own statistics."""
    if not isinstance(module, nn.Module) or getattr(module, "_warned_batch_stats", False):
        return
    if any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
        for m in module.modules()
    ):
        import warnings

        warnings.warn(
            "this network's BatchNorm keeps no running statistics (bn: batch), so its features "
            "depend on how the evaluation set is batched; train with bn: track for evaluation "
            "that does not",
            stacklevel=3,
        )
        module._warned_batch_stats = True  # type: ignore[assignment]


def module_device(module: object) -> torch.device:
    """Device of a module's first parameter (CPU for parameter-free callables)."""
    if isinstance(module, nn.Module):
        for param in module.parameters():
            return param.device
    return torch.device("cpu")


def proto_accuracy(feats: torch.Tensor, ep: Episode, n_way: int) -> float:
    """Nearest prototype by cosine similarity."""
    support = F.normalize(feats[ep.support], dim=-1)
    labels = torch.as_tensor(ep.support_labels)
    protos = F.normalize(
        torch.zeros(n_way, support.shape[1]).index_add_(0, labels, support), dim=-1
    )
    pred = (F.normalize(feats[ep.query], dim=-1) @ protos.T).argmax(1).numpy()
    return float((pred == ep.query_labels).mean())


def logreg_accuracy(feats: torch.Tensor, ep: Episode, n_way: int) -> float:
    """scikit-learn logistic regression on L2-normalised features."""
    from sklearn.linear_model import LogisticRegression

    support = F.normalize(feats[ep.support], dim=-1).numpy()
    query = F.normalize(feats[ep.query], dim=-1).numpy()
    clf = LogisticRegression(C=10.0, max_iter=1000)
    clf.fit(support, ep.support_labels)
    return float((clf.predict(query) == ep.query_labels).mean())


def finetune_accuracy(
    backbone: nn.Module,
    dataset: ImageDataset,
    ep: Episode,
    n_way: int,
    steps: int = 50,
    lr: float = 0.01,
) -> float:
    """Fine-tune a copy of the backbone plus a linear head on the support set, then predict."""
    model = copy.deepcopy(backbone).train()
    device = module_device(backbone)
    x_s = dataset.get_batch(ep.support).to(device)
    y_s = torch.as_tensor(ep.support_labels, device=device)
    with torch.no_grad():
        dim = model(x_s[:1]).shape[1]
    head = nn.Linear(dim, n_way).to(device)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(model(x_s)), y_s).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = head(model(dataset.get_batch(ep.query).to(device))).argmax(1).cpu().numpy()
    return float((pred == ep.query_labels).mean())


def evaluate_fewshot(
    backbone: nn.Module,
    dataset: ImageDataset,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 2000,
    classifier: str = "proto",
    seed: int = 0,
    progress: bool = False,
    finetune_steps: int = 50,
    finetune_lr: float = 0.01,
    shard: bool = False,
) -> FewShotResult:
    """Accuracy (%) of ``classifier`` on frozen ``backbone`` features over seeded episodes.

    ``backbone`` maps images ``[B, C, H, W]`` to features ``[B, F]`` (an ``Encoder``'s backbone).
    ``shard``: called by every rank of a ``torchrun`` group, which split the embedding
    (:func:`embed_dataset`); each then scores every episode, so all return the same result.
    """
    check_choice("classifier", classifier, CLASSIFIERS)
    check_positive("episodes", episodes)
    eps = sample_episodes(dataset, n_way, k_shot, n_query, episodes, seed)
    was_training = backbone.training
    backbone.eval()
    try:
        if classifier == "finetune":
            score: Callable[[Episode], float] = lambda ep: finetune_accuracy(  # noqa: E731
                backbone, dataset, ep, n_way, finetune_steps, finetune_lr
            )
        else:
            feats = embed_dataset(backbone, dataset, shard=shard)
            fn = proto_accuracy if classifier == "proto" else logreg_accuracy
            score = lambda ep: fn(feats, ep, n_way)  # noqa: E731
        iterator = eps
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(eps, desc=f"{n_way}-way {k_shot}-shot", leave=False)
        accs = [100.0 * score(ep) for ep in iterator]
    finally:
        backbone.train(was_training)
    mean, ci = mean_ci95(accs)
    return FewShotResult(mean, ci, len(accs), accs)
