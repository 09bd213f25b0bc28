"""Hessian-vector products ``v ↦ ∇²f(θ) v`` and the damped operator ``d ↦ d + c·H d``.

Three backends compute the same product:

- ``"reuse"``: the first-order graph ∇f(θ) (``create_graph=True``) is built once and every
  product is a backward pass through it (``retain_graph=True``);
- ``"recompute"``: forward, first-order and second-order pass for every product (public code);
- ``"func"``: forward-over-reverse ``torch.func.jvp(grad(f))``; needs BatchNorm without running
  statistics (bn="batch"/"none" or ``torch.func.replace_all_batch_norm_modules_``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bissl.trees import Tensors
from bmssl.errors import check_choice

MatVec = Callable[[Tensors], Tensors]
Reduce = Callable[[Sequence[torch.Tensor]], Tensors]

HVP_BACKENDS = ("reuse", "recompute", "func")


class HessianVectorProduct:
    """``v ↦ ∇²f(θ) v`` for a scalar ``f`` of the tensors ``θ`` (which must require grad).

    ``f(θ)`` is a functional loss (e.g. :func:`bissl.objectives.pretext_loss_of_backbone`). Outputs
    have the shapes of ``θ``; a tensor on which the gradient does not depend gets zeros.
    ``calls`` counts products; ``first_order_builds`` counts first-order graphs built.
    """

    def __init__(
        self,
        f: Callable[[Tensors], torch.Tensor],
        params: Sequence[torch.Tensor],
        backend: str = "reuse",
    ) -> None:
        check_choice("hvp backend", backend, HVP_BACKENDS)
        self.f = f
        self.params = tuple(params)
        self.backend = backend
        self.calls = 0
        self.first_order_builds = 0
        self._grads: Tensors | None = None
        if backend == "reuse":
            self._grads = self._first_order()

    def _first_order(self) -> Tensors:
        self.first_order_builds += 1
        with torch.enable_grad():
            loss = self.f(self.params)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return tuple(
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)
        )

    def _double_backward(self, grads: Tensors, v: Tensors, retain: bool) -> Tensors:
        # Only entries whose gradient still depends on θ carry second-order terms.
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        out = [torch.zeros_like(p) for p in self.params]
        if live:
            second = torch.autograd.grad(
                [grads[i] for i in live],
                self.params,
                grad_outputs=[v[i].to(grads[i].dtype) for i in live],
                retain_graph=retain,
                allow_unused=True,
            )
            for k, s in enumerate(second):
                if s is not None:
                    out[k] = s.detach()
        return tuple(out)

    def __call__(self, v: Sequence[torch.Tensor]) -> Tensors:
        v = tuple(t.detach() for t in v)
        self.calls += 1
        if self.backend == "reuse":
            assert self._grads is not None
            return self._double_backward(self._grads, v, retain=True)
        if self.backend == "recompute":
            return self._double_backward(self._first_order(), v, retain=False)
        primals = tuple(p.detach() for p in self.params)
        out = torch.func.jvp(torch.func.grad(self.f), (primals,), (v,))
        return tuple(t.detach() for t in out[1])

    def release(self) -> None:
        """Free the retained first-order graph (``reuse`` backend)."""
        self._grads = None


def damped_operator(hvp: MatVec, scale: float, reduce: Reduce | None = None) -> MatVec:
    """``d ↦ d + scale·H d`` (torchopt's ridge matvec), with ``H d`` averaged over processes by
    ``reduce`` if given, so that every process applies the same operator."""

    def matvec(d: Tensors) -> Tensors:
        hd = hvp(d)
        if reduce is not None:
            hd = reduce(hd)
        return tuple(x + scale * y for x, y in zip(d, hd, strict=True))

    return matvec
