"""Arithmetic on tuples of tensors shaped like a network's parameters (torchopt's tree ops).

The hypergradient's vectors (right-hand side, CG iterates, Hessian-vector products) are tuples
``(t_1, ..., t_K)``, one tensor per parameter tensor; these functions treat such a tuple as the
one vector that is its concatenation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensors = tuple[torch.Tensor, ...]


def tree_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k <a_k, b_k>`` as a 0-d tensor."""
    return torch.stack([torch.sum(x * y) for x, y in zip(a, b, strict=True)]).sum()


def _float64_sums(terms: list[torch.Tensor]) -> float:
    """``Σ_k terms_k`` (0-d tensors), summed in float64 in order, with one device sync.

    One ``.tolist()`` for all the terms: a ``float()`` per tensor would wait on the device once
    per parameter tensor (hundreds per step for a ResNet)."""
    return sum(torch.stack(terms).tolist()) if terms else 0.0


def tree_norm(a: Sequence[torch.Tensor]) -> float:
    """Euclidean norm of the concatenation of ``a`` (accumulated in float64)."""
    return math.sqrt(_float64_sums([torch.sum(x.double() ** 2) for x in a]))


def tree_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """``<a, b> / (||a|| ||b||)`` over the concatenations (0 when either is zero)."""
    na, nb = tree_norm(a), tree_norm(b)
    if na == 0 or nb == 0:
        return 0.0
    dot = _float64_sums([torch.sum(x.double() * y.double()) for x, y in zip(a, b, strict=True)])
    return dot / (na * nb)


def tree_add(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], alpha: float = 1.0) -> Tensors:
    """``a + alpha·b``."""
    return tuple(x.add(y, alpha=alpha) for x, y in zip(a, b, strict=True))


def flatten(a: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate a tuple of tensors into one vector ``[Σ numel]``."""
    return torch.cat([x.reshape(-1) for x in a])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> Tensors:
    """Inverse of :func:`flatten` with the shapes of ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vec[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tuple(out)
