"""Losses: NT-Xent, prototype cross-entropy and KL matching.

All take L2-normalised embeddings unless stated, and return a scalar mean over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bmssl import distributed
from bmssl.errors import check_positive


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = False
) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over ``2B`` views.

    ``z1, z2: [B, D]`` are two views of the same B images (normalised here). Row i's positive is
    its other view; the other ``2B − 2`` views are negatives; self-similarity is masked out.
    With ``gather`` the negatives come from every process (positives stay local).
    """
    check_positive("temperature", temperature)
    z1 = F.normalize(z1, dim=-1)
    z2 = F.normalize(z2, dim=-1)
    local = torch.cat([z1, z2], dim=0)  # [2B, D]
    b = z1.shape[0]
    # One gather of both views: rank r's rows are [z1_r; z2_r] at r·2B.
    others = distributed.gather_rows(local) if gather else local  # [2B·W, D]
    offset = distributed.rank() * 2 * b if gather else 0
    logits = local @ others.T / temperature  # [2B, 2B·W]
    rows = torch.arange(2 * b, device=z1.device)
    own = rows + offset
    positive = torch.where(rows < b, rows + b, rows - b) + offset
    logits = logits.masked_fill(F.one_hot(own, logits.shape[1]).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


def prototypes(support: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Normalised class means ``[n_classes, D]`` of the support embeddings ``[S, D]``."""
    one_hot = F.one_hot(labels, n_classes).to(support.dtype)  # [S, C]
    sums = one_hot.T @ support
    counts = one_hot.sum(0).clamp_min(1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


def prototype_logits(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_classes: int,
    tau: float,
) -> torch.Tensor:
    """Cosine logits ``[Q, C]`` = ``normalize(query) · p_c / tau``; no learnable parameters."""
    check_positive("tau", tau)
    protos = prototypes(F.normalize(support, dim=-1), support_labels, n_classes)
    return F.normalize(query, dim=-1) @ protos.T / tau


def prototype_cross_entropy(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    n_classes: int,
    tau: float,
) -> torch.Tensor:
    """Cross-entropy of the query labels under the prototype classifier."""
    return F.cross_entropy(
        prototype_logits(support, support_labels, query, n_classes, tau), query_labels
    )


def kl_matching(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``mean_rows KL(softmax(target) || softmax(logits))``; gradients flow into ``logits`` only."""
    target_logp = F.log_softmax(target_logits.detach(), dim=-1)
    logp = F.log_softmax(logits, dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1).mean()
