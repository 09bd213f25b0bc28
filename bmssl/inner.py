"""Differentiable inner loop: ``θ_{l+1} = θ_l − α ∇_θ L(θ_l)`` for L steps, one interface, three
backends.

An :class:`InnerLoop` evaluates the encoder at explicit parameters (``embed``), unrolls
differentiable SGD (``adapt``) and takes graph-free SGD steps (``descend``, for the bootstrapped
target). Parameters are dicts ``name -> tensor`` keyed like ``model.named_parameters()``.

- ``"func"``: :func:`torch.func.functional_call` and :func:`torch.func.grad`; composes with an
  outer ``torch.func.grad`` and with ``torch.func.vmap`` over the tasks of a meta-batch.
- ``"higher"``: ``higher.innerloop_ctx`` (monkey-patched module plus differentiable SGD),
  differentiated by ordinary autograd; one task at a time.
- ``"autograd"``: :func:`torch.func.functional_call` differentiated by ordinary autograd
  (``create_graph=True``), one task at a time, on a :func:`batch_statistics_twin` whose
  BatchNorm layers keep torch's fused kernels: the meta-gradient of ``higher`` (bit-identical on
  the CPU in the tests) without its patching, and a first order that builds no second-order graph.

Second order by default: ``θ_L`` keeps its dependence on θ through every inner gradient. First
order: the inner gradients are detached, so ``θ_L = θ − α Σ_l sg(g_l)`` and ``∂θ_L/∂θ = I``.

BatchNorm policy (explicit, the same for both backends): inside meta-training every forward
normalises with the statistics of its own batch (the support views, or the query views) and no
running statistics are read or written; with ``bn="track"`` the trainer refreshes the running
statistics of θ separately. ``higher`` runs the module itself in train mode (its patched copy
keeps cloned buffers and never writes them back); ``autograd`` runs a
:func:`batch_statistics_twin` (native BatchNorm without running statistics). ``func`` runs a :func:`functional_twin` whose
BatchNorm layers are rebuilt from primitive ops: torch's fused batch-norm backward has a wrong
batching rule for second-order gradients under vmap (pytorch/functorch#534, still so in torch
2.14), which the decomposition avoids.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call

from bmssl.errors import check_choice

Params = dict[str, torch.Tensor]
LossOfParams = Callable[[Params], torch.Tensor]

BACKENDS = ("func", "higher", "autograd")


class DecomposedBatchNorm(nn.Module):
    """Batch normalisation with batch statistics, written in primitive ops (vmap-safe 2nd order).

    ``y = (x − mean_B(x)) / sqrt(var_B(x) + eps) · weight + bias`` over every dim but channels
    (dim 1); the biased variance, as ``nn.BatchNorm`` uses in training. Keeps no buffers.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Fold the normalisation into one scale and shift per channel. The variance is
        # E[x²] − E[x]² (clamped at 0): on CPU, torch.var_mean over dims (0, 2, 3) of an NCHW
        # tensor is about 16× slower than the two plain means (measured: 7.3 vs 0.45 ms for
        # [64, 32, 28, 28]), and this layer was half of a BMSSL meta-step.
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True).sub(mean * mean).clamp_min(0.0)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.view(shape)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.view(shape)
        return torch.addcmul(shift, x, scale)


def functional_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in train mode with every BatchNorm as :class:`DecomposedBatchNorm`.

    Parameter names are unchanged, so ``model.named_parameters()`` can be passed to it; it holds
    no buffers, so ``functional_call`` never mutates state.
    """
    twin = copy.deepcopy(model)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                new = DecomposedBatchNorm(child.num_features, child.eps, child.affine)
                if child.affine:
                    new.to(device=child.weight.device, dtype=child.weight.dtype)
                setattr(module, name, new)
            else:
                swap(child)

    swap(twin)
    return twin.train()


def batch_statistics_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in train mode whose BatchNorm layers normalise with batch
    statistics and keep no running statistics (torch's fused kernels, unlike
    :func:`functional_twin`). Parameter names are unchanged and no buffer is left, so
    ``functional_call`` never mutates state."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return twin.train()


class InnerLoop(Protocol):
    """What the meta-objective needs from a backend (one task at a time, or vmapped for func)."""

    backend: str
    lr: float
    first_order: bool

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model at ``params`` applied to ``x``."""
        ...

    def adapt(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        """``steps`` differentiable SGD steps on ``loss_fn`` from ``params`` (θ -> θ_L)."""
        ...

    def descend(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        """``steps`` SGD steps from ``sg(params)`` without a graph (the result is detached)."""
        ...


def _sgd(params: Params, grads: Params, lr: float) -> Params:
    return {name: p - lr * grads[name] for name, p in params.items()}


class FuncInnerLoop:
    """``torch.func`` backend: ``functional_call`` on a :func:`functional_twin`."""

    backend = "func"

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False) -> None:
        self.model = model
        self.lr = lr
        self.first_order = first_order

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def adapt(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        for _ in range(steps):
            if self.first_order:
                # The gradient at sg(θ_l): the same values as detaching the gradient at θ_l
                # (bit for bit), without recording its second-order graph under the outer grad.
                grads = torch.func.grad(loss_fn)({n: p.detach() for n, p in params.items()})
            else:
                grads = torch.func.grad(loss_fn)(params)
            params = _sgd(params, grads, self.lr)
        return params

    def descend(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        params = {name: p.detach() for name, p in params.items()}
        for _ in range(steps):
            grads = torch.func.grad(loss_fn)(params)
            params = {n: p.detach() for n, p in _sgd(params, grads, self.lr).items()}
        return params


def _autograd_grads(loss: torch.Tensor, params: Params, create_graph: bool) -> Params:
    """``∂loss/∂params`` by autograd (zeros for a tensor the loss does not reach)."""
    names = list(params)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
    )
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}


class AutogradInnerLoop:
    """``autograd`` backend: ``functional_call`` on a :func:`batch_statistics_twin`, gradients by
    ``torch.autograd.grad``. Second order keeps each inner gradient's graph
    (``create_graph=True``); first order takes each inner gradient at ``sg(θ_l)``, so no graph
    of it is built and ``θ_{l+1} = θ_l − α·g_l`` with ``g_l`` a constant."""

    backend = "autograd"

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False) -> None:
        self.model = model
        self.lr = lr
        self.first_order = first_order
        # Where each named parameter lives, so that a call swaps tensors in and back out
        # directly (what functional_call does, without its per-call bookkeeping).
        self.slots = {}
        for name, _ in model.named_parameters():
            owner, _, attr = name.rpartition(".")
            self.slots[name] = (model.get_submodule(owner), attr)
        self.tied = len(list(model.named_parameters(remove_duplicate=False))) != len(self.slots)

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        if self.tied or params.keys() != self.slots.keys():  # functional_call handles those
            return functional_call(self.model, params, (x,))
        saved = {name: mod._parameters[attr] for name, (mod, attr) in self.slots.items()}
        try:
            for name, (mod, attr) in self.slots.items():
                mod._parameters[attr] = params[name]  # type: ignore[assignment]
            return self.model(x)
        finally:
            for name, (mod, attr) in self.slots.items():
                mod._parameters[attr] = saved[name]

    def adapt(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        # A θ that carries no gradient (meta-loss values only) still needs a graph to step.
        params = {
            n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()
        }
        with torch.enable_grad():
            for _ in range(steps):
                if self.first_order:
                    at = {n: p.detach().requires_grad_() for n, p in params.items()}
                    grads = _autograd_grads(loss_fn(at), at, create_graph=False)
                else:
                    grads = _autograd_grads(loss_fn(params), params, create_graph=True)
                params = _sgd(params, grads, self.lr)
        return params

    def descend(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        current = {n: p.detach() for n, p in params.items()}
        for _ in range(steps):
            at = {n: p.requires_grad_() for n, p in current.items()}
            with torch.enable_grad():
                grads = _autograd_grads(loss_fn(at), at, create_graph=False)
            current = {n: (at[n] - self.lr * grads[n]).detach() for n in at}
        return current


class HigherInnerLoop:
    """``higher`` backend: a monkey-patched module and a differentiable SGD from innerloop_ctx."""

    backend = "higher"

    def __init__(self, fmodel, diffopt, names: list[str], lr: float, first_order: bool) -> None:
        self.fmodel = fmodel
        self.diffopt = diffopt
        self.names = names
        self.lr = lr
        self.first_order = first_order

    def _as_list(self, params: Params) -> list[torch.Tensor]:
        return [params[name] for name in self.names]

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.fmodel(x, params=self._as_list(params))

    def adapt(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        # Second order: higher differentiates each step with create_graph=True. First order:
        # the same steps with detached gradients, so θ_L still depends on θ (through identity).
        callback = (lambda grads: [g.detach() for g in grads]) if self.first_order else None
        current = self._as_list(params)
        for _ in range(steps):
            loss = loss_fn(dict(zip(self.names, current)))
            current = self.diffopt.step(loss, params=current, grad_callback=callback)
        return dict(zip(self.names, current))

    def descend(self, params: Params, loss_fn: LossOfParams, steps: int) -> Params:
        current = {n: p.detach().requires_grad_() for n, p in params.items()}
        for _ in range(steps):
            grads = torch.autograd.grad(loss_fn(current), list(current.values()))
            current = {
                n: (p - self.lr * g).detach().requires_grad_()
                for (n, p), g in zip(current.items(), grads)
            }
        return {n: p.detach() for n, p in current.items()}


@contextlib.contextmanager
def open_inner_loop(
    model: nn.Module, backend: str, lr: float, first_order: bool = False
) -> Iterator[InnerLoop]:
    """The backend's :class:`InnerLoop` for one task (``higher``) or a whole meta-batch (``func``).

    ``model`` is the encoder itself for ``higher``, its :func:`functional_twin` for ``func`` and
    its :func:`batch_statistics_twin` for ``autograd`` (one task at a time, like ``higher``).
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "func":
        yield FuncInnerLoop(model, lr, first_order)
        return
    if backend == "autograd":
        yield AutogradInnerLoop(model, lr, first_order)
        return
    import higher

    was_training = model.training
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    names = [name for name, _ in model.named_parameters()]
    try:
        # copy_initial_weights=False keeps θ on the tape; every call passes params explicitly.
        with higher.innerloop_ctx(
            model, opt, copy_initial_weights=False, track_higher_grads=True
        ) as (fmodel, diffopt):
            yield HigherInnerLoop(fmodel, diffopt, names, lr, first_order)
    finally:
        model.train(was_training)
