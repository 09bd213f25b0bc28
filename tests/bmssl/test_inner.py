import pytest
import torch
from torch import nn

from bmssl.errors import UserError
from bmssl.inner import DecomposedBatchNorm, functional_twin, open_inner_loop
from bmssl.nets import build_encoder

D = torch.float64


def _encoder(bn: str = "batch") -> nn.Module:
    return build_encoder("conv4", 1, 16, 4, bn, 8, 4).to(D)


def _loss_of(inner, x):
    def loss(p):
        z = inner.embed(p, x)
        return (z[:, :1] * z[:, 1:2]).sum() + z[:, 2].exp().sum()

    return loss


@pytest.mark.parametrize("shape", [(6, 3, 5, 5), (7, 4)])
def test_decomposed_batchnorm_matches_native_forward_and_grads(shape):
    native = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    native = native.to(D).train()
    with torch.no_grad():
        native.weight.uniform_(0.5, 1.5)
        native.bias.uniform_(-0.5, 0.5)
    ours = DecomposedBatchNorm(shape[1]).to(D)
    ours.load_state_dict({"weight": native.weight, "bias": native.bias})
    x = torch.randn(shape, dtype=D, requires_grad=True)
    torch.testing.assert_close(ours(x), native(x))
    g_native = torch.autograd.grad(native(x).pow(3).sum(), [x, native.weight], create_graph=True)
    g_ours = torch.autograd.grad(ours(x).pow(3).sum(), [x, ours.weight], create_graph=True)
    for a, b in zip(g_ours, g_native):
        torch.testing.assert_close(a, b)
    # Second order too (what the meta-gradient differentiates).
    hv_native = torch.autograd.grad(g_native[0].sum(), native.weight)[0]
    hv_ours = torch.autograd.grad(g_ours[0].sum(), ours.weight)[0]
    torch.testing.assert_close(hv_ours, hv_native)


def test_functional_twin_keeps_names_and_drops_buffers():
    enc = _encoder("track")
    twin = functional_twin(enc)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in enc.named_parameters()]
    assert list(twin.buffers()) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in twin.modules())
    enc.train()
    x = torch.rand(5, 1, 16, 16, dtype=D)
    params = dict(enc.named_parameters())
    torch.testing.assert_close(torch.func.functional_call(twin, params, (x,)), enc(x))


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_adapt_equals_unrolled_autograd_sgd(backend):
    enc = _encoder()
    model = functional_twin(enc) if backend == "func" else enc
    x = torch.rand(6, 1, 16, 16, dtype=D)
    theta = {n: p.detach().clone() for n, p in enc.named_parameters()}
    lr, steps = 0.3, 3

    # Reference: plain autograd with create_graph on leaves.
    ref = {n: p.clone().requires_grad_() for n, p in theta.items()}
    with open_inner_loop(functional_twin(enc), "func", lr) as helper:
        loss = _loss_of(helper, x)
        current = ref
        for _ in range(steps):
            grads = torch.autograd.grad(loss(current), list(current.values()), create_graph=True)
            current = {n: p - lr * g for (n, p), g in zip(current.items(), grads)}
        v = {n: torch.randn_like(p) for n, p in current.items()}
        ref_grad = torch.autograd.grad(
            sum((current[n] * v[n]).sum() for n in v), list(ref.values())
        )

    with open_inner_loop(model, backend, lr) as inner:
        loss = _loss_of(inner, x)
        if backend == "func":
            adapted = inner.adapt(theta, loss, steps)
            ours = torch.func.grad(
                lambda p: sum((inner.adapt(p, loss, steps)[n] * v[n]).sum() for n in v)
            )(theta)
            ours = list(ours.values())
        else:
            leaves = {n: p.clone().requires_grad_() for n, p in theta.items()}
            adapted = inner.adapt(leaves, loss, steps)
            ours = torch.autograd.grad(
                sum((adapted[n] * v[n]).sum() for n in v), list(leaves.values())
            )
    for n in theta:
        torch.testing.assert_close(adapted[n], current[n])
    for a, b in zip(ours, ref_grad):
        torch.testing.assert_close(a, b)
    # Second order: the Jacobian of θ_L is not the identity.
    assert any(not torch.allclose(a, v[n]) for a, n in zip(ours, v))


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_first_order_jacobian_is_identity(backend):
    enc = _encoder()
    model = functional_twin(enc) if backend == "func" else enc
    x = torch.rand(6, 1, 16, 16, dtype=D)
    theta = {n: p.detach().clone().requires_grad_() for n, p in enc.named_parameters()}
    v = {n: torch.randn_like(p) for n, p in theta.items()}
    with open_inner_loop(model, backend, 0.3, first_order=True) as inner:
        adapted = inner.adapt(theta, _loss_of(inner, x), 2)
        moved = sum((adapted[n] - theta[n]).abs().sum() for n in theta)
        grads = torch.autograd.grad(sum((adapted[n] * v[n]).sum() for n in v), list(theta.values()))
    assert moved > 0
    for g, n in zip(grads, v):
        torch.testing.assert_close(g, v[n])


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_descend_takes_detached_sgd_steps(backend):
    enc = _encoder()
    model = functional_twin(enc) if backend == "func" else enc
    x = torch.rand(6, 1, 16, 16, dtype=D)
    theta = {n: p.detach().clone().requires_grad_() for n, p in enc.named_parameters()}
    with open_inner_loop(model, backend, 0.2) as inner:
        loss = _loss_of(inner, x)
        out = inner.descend(theta, loss, 2)
        with open_inner_loop(functional_twin(enc), "func", 0.2) as ref_loop:
            ref = ref_loop.adapt(
                {n: p.detach() for n, p in theta.items()}, _loss_of(ref_loop, x), 2
            )
    for n in theta:
        assert not out[n].requires_grad
        torch.testing.assert_close(out[n], ref[n])


def test_vmap_over_tasks_matches_loop_with_batchnorm():
    # The reason for the decomposed BatchNorm: second-order gradients under vmap.
    twin = functional_twin(_encoder("batch"))
    theta = {n: p.detach().clone() for n, p in twin.named_parameters()}
    xs = torch.rand(3, 6, 1, 16, 16, dtype=D)
    with open_inner_loop(twin, "func", 0.3) as inner:

        def task(p, x):
            loss = _loss_of(inner, x)
            return loss(inner.adapt(p, loss, 2))

        vm = torch.func.grad(lambda p: torch.func.vmap(task, in_dims=(None, 0))(p, xs).sum())(theta)
        loop = [torch.func.grad(task)(theta, xs[b]) for b in range(3)]
    for n in theta:
        torch.testing.assert_close(vm[n], sum(g[n] for g in loop))


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="backend"), open_inner_loop(_encoder(), "jax", 0.1):
        pass
