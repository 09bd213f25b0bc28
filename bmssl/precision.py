"""Numerical precision of the first-order training stages, and the GPU settings that apply.

``precision="bf16"`` runs the forward pass and the loss of a first-order step (SimCLR, ProtoNet,
BiSSL's lower level, fine-tuning) under ``torch.autocast`` with bfloat16; gradients and the
optimiser state stay float32. Second-order computations stay float32 on purpose: BMSSL's
meta-gradient differentiates through the inner steps, and its float32 value is already
rounding-limited for long unrolls (README, "Benchmarks"); BiSSL's Hessian-vector products feed a
conjugate-gradient solve whose residual test needs more than bfloat16's 8-bit mantissa.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` to bfloat16 on ``device`` when ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def configure_device(device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (fixed input shapes) and TF32 matmuls and convolutions."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


M = TypeVar("M", bound=nn.Module)


def to_device(module: M, device: torch.device) -> M:
    """``module`` on ``device``, in channels-last memory format on CUDA (faster convolutions)."""
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module
