"""Data-parallel training under ``torchrun``: the process group, rank helpers, gradient averaging
and BatchNorm over the global batch.

``torchrun --standalone --nproc_per_node N -m bmssl train ...`` starts N processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`process_group` joins them (NCCL when training on CUDA, gloo on the CPU) and leaves the
group at the end. Without a launcher (``WORLD_SIZE`` unset or 1) it does nothing, and every
helper here answers as a single process would (rank 0 of 1, reductions are no-ops), so a trainer
has one code path.

The trainers split a global batch that every rank draws identically (a pure function of seed
and step) and average gradients, so N processes take the same steps as one process on the same
global batches (up to float rounding).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bmssl.errors import UserError

#: collectives wait this long for a slow rank (a long validation or checkpoint write on rank 0)
TIMEOUT = timedelta(minutes=60)


# -- the launcher's environment and the process group -------------------------------------------


def launched_world() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when not launched by it)."""
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int | None:
    """``LOCAL_RANK`` set by ``torchrun`` (the process's index on its node), else None."""
    return _env_int("LOCAL_RANK", None) if "LOCAL_RANK" in os.environ else None


def _env_int(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer; launch with torchrun") from None


def initialized() -> bool:
    """Whether a default process group exists (this process trains with others)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join ``torchrun``'s processes for the body when ``WORLD_SIZE > 1``; leave at the end.

    ``device`` is the resolved training device (``cuda:LOCAL_RANK`` under torchrun): NCCL on
    CUDA, gloo on the CPU. Nothing happens without a launcher or when a group already exists
    (the caller that made it owns it).
    """
    if launched_world() <= 1 or initialized():
        yield
        return
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(
                f"WORLD_SIZE={launched_world()} is set but {name} is not; launch with "
                "torchrun --standalone --nproc_per_node N (or unset WORLD_SIZE)"
            )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (picklable objects; no-op in one process)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -- splitting the work and averaging gradients -------------------------------------------------


def shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous block of ``n`` items: ``[⌊rn/W⌋, ⌊(r+1)n/W⌋)``.

    Blocks differ in size by at most one and cover ``0..n-1`` in rank order.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return slice(rank * n // world, (rank + 1) * n // world)


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """In place, every tensor becomes its mean over ranks: ``t <- (1/W) Σ_r t_r``.

    One collective for all of them (flattened into one buffer per dtype); no-op in one process.
    """
    world = world_size()
    if world == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """:func:`all_reduce_mean_` on detached copies, which it returns (``tensors`` are left alone;
    in one process they are returned as they are)."""
    if world_size() == 1:
        return tuple(tensors)
    copies = tuple(t.detach().clone() for t in tensors)
    all_reduce_mean_(copies)
    return copies


def average_gradients_(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each ``.grad`` by its mean over ranks (a missing gradient counts as zero)."""
    if world_size() == 1:
        return
    params = list(parameters)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params if p.grad is not None])


# -- BatchNorm over the global batch ------------------------------------------------------------


# torch.distributed.nn.functional's differentiable collectives are deprecated (torch 2.14) for a
# private module; these two are small enough to keep here, on the public collectives.


def _summed(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` summed over the ranks (``t`` itself is left alone)."""
    out = t.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _SumOverRanks(torch.autograd.Function):
    """``Σ_r t_r``; each rank's input feeds every rank's output, so the backward is also
    ``Σ_r grad_r``."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return _summed(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _summed(grad)


class _GatherRows(torch.autograd.Function):
    """``cat_r t_r`` along rows (equal shapes on every rank); the backward sums the ranks'
    gradients of the whole output and keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        ctx.rows = slice(dist.get_rank() * len(t), (dist.get_rank() + 1) * len(t))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _summed(grad)[ctx.rows]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable ``Σ_r t_r`` over the process group (``t`` itself in one process)."""
    return _SumOverRanks.apply(t) if world_size() > 1 else t


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather of every rank's ``t [n, ...]`` into ``[W·n, ...]`` in rank order
    (``t`` itself in one process); every rank must pass the same shape."""
    return _GatherRows.apply(t) if world_size() > 1 else t


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across ranks.

    ``μ = Σ_r Σ x / N``, ``σ² = Σ_r Σ (x − μ)² / N`` (two all-reduces, both differentiable),
    ``y = (x − μ)/√(σ² + ε)·w + b``; running statistics as ``nn.BatchNorm`` (unbiased variance
    ``σ²·N/(N − 1)``). Any device and backend (torch's ``SyncBatchNorm`` needs CUDA); in one
    process or in eval mode it is ordinary BatchNorm. Computed in at least float32 (autocast).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        # The count rides with the sums: one collective and no host sync (ranks may differ in
        # batch size; a float32 count is exact up to 2^24 values per channel, then off by ~1e-7).
        local = x.new_full((1,), float(x.numel() // x.shape[1]))
        sums = sum_over_ranks(torch.cat([x.sum(dims), local]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = sum_over_ranks(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach(), n)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = (
            1.0 / float(self.num_batches_tracked.item()) if self.momentum is None else self.momentum
        )
        unbiased = var * n / (n - 1.0).clamp_min(1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced, in place, by :class:`GlobalBatchNorm` sharing its
    parameters and buffers (the state_dict keys do not change). Returns ``module`` (or the
    replacement when ``module`` itself is a BatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module
