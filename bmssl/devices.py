"""Which torch device a run trains on: :func:`resolve_device` turns a config's ``device``
(``auto``, ``cpu`` or ``cuda[:N]``) into a :class:`torch.device`, one GPU per ``torchrun``
process (:mod:`bmssl.distributed`)."""

from __future__ import annotations

import torch

from bmssl import distributed
from bmssl.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.

    Under ``torchrun`` (``LOCAL_RANK`` set) ``auto`` and ``cuda`` are ``cuda:LOCAL_RANK``, one GPU
    per process; ``cuda:N`` with several processes is refused (they would share one GPU).
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name!r} is not supported; use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} was asked for but CUDA is not available; use device=cpu")
    local = distributed.local_rank()
    if name == "cuda" and local is not None:
        visible = torch.cuda.device_count()
        if local >= visible:
            raise UserError(
                f"LOCAL_RANK={local} but only {visible} GPU(s) are visible; launch at most "
                f"--nproc_per_node {visible}"
            )
        return torch.device("cuda", local)
    world = distributed.launched_world()
    if name.startswith("cuda:") and world > 1:
        raise UserError(
            f"device={name} would put all {world} torchrun processes on one GPU; use "
            "device=auto or device=cuda (process r trains on cuda:LOCAL_RANK)"
        )
    return torch.device(name)
