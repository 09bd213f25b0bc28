"""LARS (You et al., 2017), the layer-wise adaptive optimiser of SimCLR and of BiSSL's lower level.

No maintained LARS ships with the installed packages (torch has none; timm/lightly are not
installed), so it is written here. For each parameter tensor ``p`` with gradient ``g``:

    u = g + wd·p
    trust = eta·||p|| / ||u||      (1 when either norm is 0)
    m <- momentum·m + trust·u
    p <- p − lr·m

With ``exclude_1d`` (the default), tensors with one dimension (biases, BatchNorm affine) skip
both weight decay and the trust ratio, as in SimCLR / Barlow Twins. BiSSL's public code applies
LARS to every tensor, so the BiSSL trainer passes ``exclude_1d=bilevel.lars_exclude_1d``
(default False; docs/bissl_diagnostics.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from bmssl.errors import UserError


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum; see the module docstring for the rule."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 0.001,
        exclude_1d: bool = True,
    ) -> None:
        if lr < 0:
            raise UserError(f"LARS lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise UserError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or eta <= 0:
            raise UserError(
                f"LARS needs weight_decay >= 0 and eta > 0, got weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "exclude_1d": exclude_1d,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not (group["exclude_1d"] and p.ndim <= 1):
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = torch.where(
                        (p_norm > 0) & (u_norm > 0),
                        group["eta"] * p_norm / u_norm,
                        torch.ones_like(p_norm),
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
