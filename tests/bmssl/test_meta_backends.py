"""The memory-lean meta-gradient paths against the plain ones, in float64: chunked vmap
(``task_chunk``) against one vmap over every task, and the ``autograd`` backend (its bootstrap
target's first step through the graph of the forward at θ_L) against ``higher`` for every
bootstrap shape."""

import dataclasses

import pytest
import torch
from torch import nn

from bmssl.inner import batch_statistics_twin
from bmssl.meta import BMSSLConfig, meta_gradient, model_for_backend
from bmssl.meta_backends import _chunks
from bmssl.nets import build_encoder
from bmssl.tasks import TaskBatch

D = torch.float64
N, K, Q = 3, 2, 2


def _batch(tasks: int) -> TaskBatch:
    g = torch.Generator().manual_seed(5)
    support = torch.rand(tasks, N * K, 1, 16, 16, generator=g, dtype=D)
    query = torch.rand(tasks, N * Q, 1, 16, 16, generator=g, dtype=D)
    return TaskBatch(support, query, N, K, Q, torch.zeros(tasks, N, dtype=torch.long))


def _model(bn: str = "track") -> nn.Module:
    model = build_encoder("conv4", 1, 16, 4, bn, 8, 4).to(D)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def _config(**kw) -> BMSSLConfig:
    base = dict(task_images=N, support_views=K, query_views=Q, inner_steps=1, bootstrap_steps=1,
                inner_lr=0.4, beta=0.5, temperature=0.5)  # fmt: skip
    base.update(kw)
    return BMSSLConfig(**base)


def _close(a, b, atol=1e-10, rtol=1e-8):
    assert a.grads.keys() == b.grads.keys()
    assert max(float(g.abs().max()) for g in b.grads.values()) > 1e-4  # not vacuous
    for name in a.grads:
        torch.testing.assert_close(a.grads[name], b.grads[name], atol=atol, rtol=rtol, msg=name)
    for x, y in zip(a[1:], b[1:]):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def _run(model, batch, cfg):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return meta_gradient(params, model_for_backend(model, cfg.backend), batch, cfg)


def test_chunks_cover_the_tasks_in_order():
    assert _chunks(5, 0) == [slice(0, 5)]
    assert _chunks(5, 5) == [slice(0, 5)] and _chunks(5, 9) == [slice(0, 5)]
    assert _chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_chunked_vmap_equals_one_vmap(chunk, first_order):
    model, batch = _model(), _batch(5)
    plain = _run(model, batch, _config(meta_batch=5, first_order=first_order))
    chunked = _run(model, batch, _config(meta_batch=5, first_order=first_order, task_chunk=chunk))
    _close(chunked, plain)


def test_one_chunk_is_the_plain_path_bit_for_bit():
    model, batch = _model(), _batch(3)
    plain = _run(model, batch, _config(meta_batch=3))
    for chunk in (3, 7):
        same = _run(model, batch, _config(meta_batch=3, task_chunk=chunk))
        for name in plain.grads:
            assert torch.equal(same.grads[name], plain.grads[name])


@pytest.mark.parametrize(
    "delta, on_query, steps",
    [(1, True, 1), (1, False, 1), (2, True, 1), (3, False, 2), (2, True, 0), (0, True, 2)],
)
@pytest.mark.parametrize("first_order", [False, True])
def test_autograd_backend_equals_higher(delta, on_query, steps, first_order):
    model, batch = _model(), _batch(2)
    kw = dict(meta_batch=2, bootstrap_steps=delta, bootstrap_query_step=on_query,
              inner_steps=steps, first_order=first_order)  # fmt: skip
    ref = _run(model, batch, _config(backend="higher", **kw))
    _close(_run(model, batch, _config(backend="autograd", **kw)), ref)


def test_autograd_backend_with_fixed_targets_equals_func():
    model, batch = _model("batch"), _batch(2)
    cfg = _config(meta_batch=2, bootstrap_steps=2)
    targets = torch.randn(2, N * Q, N, dtype=D)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours = meta_gradient(
        params, model, batch, dataclasses.replace(cfg, backend="autograd"), targets
    )
    ref = meta_gradient(params, model, batch, cfg, targets)
    _close(ours, ref)


def test_batch_statistics_twin_keeps_names_drops_buffers_and_leaves_the_model():
    model = _model("track").eval()
    twin = batch_statistics_twin(model)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert list(twin.buffers()) == [] and twin.training and not model.training
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model_for_backend(_model("batch"), "autograd") is not None
    plain = _model("none")
    assert model_for_backend(plain, "autograd") is plain


@pytest.mark.parametrize("first_order", [False, True])
def test_autograd_backend_is_higher_bit_for_bit_in_float32(first_order):
    # Same kernels in the same order (native BatchNorm, one task at a time), the bootstrap
    # step's reused graph included: not one bit apart on the CPU.
    model = _model().float()
    batch = _batch(2).to(torch.float32)
    kw = dict(meta_batch=2, first_order=first_order)
    ref = _run(model, batch, _config(backend="higher", **kw))
    out = _run(model, batch, _config(backend="autograd", **kw))
    for name in ref.grads:
        assert torch.equal(out.grads[name], ref.grads[name]), name
    assert torch.equal(out.loss, ref.loss)
