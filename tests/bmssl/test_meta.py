import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmssl.config import load_config
from bmssl.errors import UserError
from bmssl.inner import functional_twin, open_inner_loop
from bmssl.losses import kl_matching, prototype_logits
from bmssl.meta import (
    BMSSLConfig,
    BMSSLTrainer,
    loo_prototype_cross_entropy,
    meta_gradient,
    meta_loss,
    meta_targets,
    support_loss,
    task_meta_loss,
    train_bmssl,
)
from bmssl.methods import get_method
from bmssl.nets import Encoder, build_encoder
from bmssl.tasks import TaskBatch

ROOT = Path(__file__).resolve().parents[2]
D = torch.float64
N, K, Q, B = 3, 2, 2, 2


def _batch(size: int = 16, flat: bool = False) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    shape = (1, 4, 4) if flat else (1, size, size)
    support = torch.rand(B, N * K, *shape, generator=g, dtype=D)
    query = torch.rand(B, N * Q, *shape, generator=g, dtype=D)
    return TaskBatch(support, query, N, K, Q, torch.zeros(B, N, dtype=torch.long))


def _mlp(bn: bool) -> Encoder:
    """A tiny encoder on flattened 4×4 inputs (cheap enough for coordinate-wise differences)."""
    layers = [nn.Flatten(), nn.Linear(16, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6, track_running_stats=False))
    layers.append(nn.Tanh())
    return Encoder(nn.Sequential(*layers), nn.Linear(6, 4)).to(D)


def _conv4(bn: str) -> Encoder:
    """A width-4 Conv4 on 16×16 inputs; He-initialised so that signals survive without BN."""
    model = build_encoder("conv4", 1, 16, 4, bn, 8, 4).to(D)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def _config(**kw) -> BMSSLConfig:
    base = dict(
        task_images=N, support_views=K, query_views=Q, meta_batch=B, inner_steps=2, bootstrap_steps=2,
        inner_lr=0.4, beta=0.5, temperature=0.5,
    )  # fmt: skip
    base.update(kw)
    return BMSSLConfig(**base)


def _grads(model, batch, **kw):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return meta_gradient(params, model, batch, _config(**kw))


def _assert_grads_close(a, b, atol=1e-5, rtol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=name)


# -- task losses -----------------------------------------------------------------------------------


def test_leave_one_out_loss_matches_brute_force():
    z = torch.randn(4 * 3, 5, dtype=D)  # N=4 images, K=3 views, class-major
    labels = torch.arange(4).repeat_interleave(3)
    zn = F.normalize(z, dim=-1)
    rows = []
    for i in range(12):
        protos = []
        for c in range(4):
            members = [j for j in range(12) if labels[j] == c and j != i]
            protos.append(F.normalize(zn[members].mean(0), dim=-1))
        rows.append(torch.stack(protos) @ zn[i] / 0.3)
    expected = F.cross_entropy(torch.stack(rows), labels)
    torch.testing.assert_close(loo_prototype_cross_entropy(z, 4, 0.3), expected)


def test_kl_is_zero_with_zero_gradient_when_target_equals_current():
    logits = torch.randn(6, 3, dtype=D, requires_grad=True)
    kl = kl_matching(logits.detach(), logits)
    (grad,) = torch.autograd.grad(kl, logits)
    assert abs(kl.item()) < 1e-12 and grad.abs().max() < 1e-12
    # Through the meta-objective: targets equal to the current logits leave only β·CE.
    model = _mlp(bn=False)
    batch = _batch(flat=True)
    cfg = _config(bootstrap_steps=3)
    params = {n: p.detach() for n, p in model.named_parameters()}
    with open_inner_loop(model, "func", cfg.inner_lr) as inner:
        task = batch[0]
        current = task_meta_loss(inner, params, task, _config(bootstrap_steps=0))
        theta_l = inner.descend(params, lambda p: support_loss(inner.embed(p, task.support), task, cfg.inner_loss, cfg.temperature), cfg.inner_steps)  # fmt: skip
        same = prototype_logits(
            inner.embed(theta_l, task.support), task.support_labels,
            inner.embed(theta_l, task.query), N, cfg.temperature,
        )  # fmt: skip
        out = task_meta_loss(inner, params, task, cfg, target_logits=same)
    assert abs(out.kl.item()) < 1e-12 and abs(current.kl.item()) < 1e-12
    torch.testing.assert_close(out.loss, cfg.beta * out.ce)


# -- meta-gradient: backends, finite differences, ablations ----------------------------------------


@pytest.mark.parametrize("bn", ["batch", "none", "track"])
@pytest.mark.parametrize("first_order", [False, True])
def test_backends_give_the_same_meta_gradient(bn, first_order):
    model = _conv4(bn)
    batch = _batch()
    ref = _grads(model, batch, backend="higher", first_order=first_order)
    assert max(g.abs().max() for g in ref.grads.values()) > 1e-4  # not vacuous
    variants = [dict(backend="func", vmap=False), dict(backend="func", vmap=True)]
    variants += [dict(backend="func", task_chunk=1), dict(backend="autograd")]
    for variant in variants:
        out = _grads(model, batch, first_order=first_order, **variant)
        # The issue asks for 1e-5; float64 gives far better, so hold it to that.
        _assert_grads_close(out.grads, ref.grads, atol=1e-9, rtol=1e-6)
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(out.kl, ref.kl)


@pytest.mark.parametrize("bn", [False, True])
def test_meta_gradient_matches_finite_differences(bn):
    model = _mlp(bn)
    batch = _batch(flat=True)
    cfg = _config(bootstrap_steps=2, bootstrap_query_step=True)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    # θ_T is a stop-gradient: hold its logits fixed, then differentiate the rest numerically.
    targets = meta_targets(theta, model, batch, cfg)
    analytic = meta_gradient(theta, model, batch, cfg, targets=targets).grads
    also = meta_gradient(
        theta, model, batch, dataclasses.replace(cfg, backend="higher"), targets=targets
    ).grads
    _assert_grads_close(also, analytic, atol=1e-10, rtol=1e-8)
    free = meta_gradient(theta, model, batch, cfg).grads  # targets computed inside: same θ_T
    _assert_grads_close(free, analytic, atol=1e-12, rtol=1e-10)
    eps = 1e-6
    for name, p in theta.items():
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            values = []
            for sign in (1, -1):
                shifted = dict(theta)
                bumped = p.clone().view(-1)
                bumped[i] += sign * eps
                shifted[name] = bumped.view_as(p)
                values.append(meta_loss(shifted, model, batch, cfg, targets=targets).loss)
            numeric.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
        torch.testing.assert_close(analytic[name], numeric, atol=1e-7, rtol=1e-5, msg=name)


def test_first_order_is_the_gradient_at_theta_l():
    model = _mlp(bn=True)
    batch = _batch(flat=True)
    cfg = _config(first_order=True)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = meta_targets(theta, model, batch, cfg)
    fo = meta_gradient(theta, model, batch, cfg, targets=targets).grads
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    with open_inner_loop(model, "func", cfg.inner_lr) as inner:
        for b, task in enumerate(batch.tasks()):
            loss = lambda p, task=task: support_loss(inner.embed(p, task.support), task, cfg.inner_loss, cfg.temperature)  # noqa: E731 # fmt: skip
            theta_l = {n: p.requires_grad_() for n, p in inner.descend(theta, loss, 2).items()}
            logits = prototype_logits(
                inner.embed(theta_l, task.support), task.support_labels,
                inner.embed(theta_l, task.query), N, cfg.temperature,
            )  # fmt: skip
            obj = kl_matching(targets[b], logits) + cfg.beta * F.cross_entropy(
                logits, task.query_labels
            )
            for n, g in zip(theta_l, torch.autograd.grad(obj / B, list(theta_l.values()))):
                total[n] += g
    _assert_grads_close(fo, total, atol=1e-12, rtol=1e-10)
    so = meta_gradient(theta, model, batch, _config(), targets=targets).grads
    assert any(not torch.allclose(so[n], fo[n]) for n in so)


@pytest.mark.parametrize("backend", ["func", "higher", "autograd"])
def test_delta_zero_is_the_plain_query_loss_gradient(backend):
    model = _conv4("batch")
    batch = _batch()
    cfg = _config(bootstrap_steps=0, beta=0.7, backend=backend)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = meta_gradient(theta, model, batch, cfg)
    # Independent reference: unrolled autograd SGD, then β·CE of the queries at θ_L.
    twin = functional_twin(model)
    leaves = {n: p.clone().requires_grad_() for n, p in theta.items()}

    def embed(p, x):
        return torch.func.functional_call(twin, p, (x,))

    total = 0.0
    for task in batch.tasks():
        p = leaves
        for _ in range(cfg.inner_steps):
            z = embed(p, task.support)
            g = torch.autograd.grad(
                loo_prototype_cross_entropy(z, N, cfg.temperature),
                list(p.values()),
                create_graph=True,
            )
            p = {n: v - cfg.inner_lr * gi for (n, v), gi in zip(p.items(), g)}
        logits = prototype_logits(
            embed(p, task.support), task.support_labels, embed(p, task.query), N, cfg.temperature
        )
        total = total + cfg.beta * F.cross_entropy(logits, task.query_labels) / B
    ref = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    _assert_grads_close(out.grads, ref, atol=1e-10, rtol=1e-8)
    assert abs(out.kl.item()) < 1e-12


def test_bootstrap_changes_the_gradient():
    model = _conv4("batch")
    batch = _batch()
    with_b = _grads(model, batch, bootstrap_steps=2).grads
    without = _grads(model, batch, bootstrap_steps=0).grads
    assert any(not torch.allclose(with_b[n], without[n]) for n in with_b)


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"inner_lr": 0}, "inner_lr"),
        ({"outer_lr": -1e-3}, "outer_lr"),
        ({"temperature": 0}, "temperature"),
        ({"backend": "jax"}, "backend"),
        ({"bn": "group"}, "bn"),
        ({"augment": "huge"}, "augment"),
        ({"task_images": 1}, "task_images"),
        ({"bootstrap_steps": -1}, "bootstrap_steps"),
        ({"bootstrap_steps": 0, "beta": 0}, "beta"),
        ({"support_views": 1}, "support_views"),
        ({"inner_loss": "ntxent", "support_views": 3}, "support_views=2"),
        ({"num_train_images": 3}, "num_train_images"),
        ({"task_chunk": -1}, "task_chunk"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(UserError, match=match):
        load_config(BMSSLConfig, overrides=bad)


def test_config_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task_images: 7\nbackend: higher\nbootstrap_steps: 3\n")
    cfg = load_config(
        BMSSLConfig, path, ["bootstrap_steps=0", "first_order=true", "temperature=0.1"]
    )
    assert (cfg.task_images, cfg.backend, cfg.bootstrap_steps, cfg.first_order, cfg.temperature) == (
        7, "higher", 0, True, 0.1,
    )  # fmt: skip
    with pytest.raises(UserError, match="unknown BMSSLConfig option"):
        load_config(BMSSLConfig, path, ["delta=2"])


def test_every_shipped_preset_of_every_method_loads():
    from bmssl.methods import list_methods

    for method in list_methods():
        for preset in method.presets:
            cfg = method.load_config(preset)
            for key, value in method.fixed.items():
                assert getattr(cfg, key) == value
    assert get_method("bmssl").load_config("cpu").bootstrap_steps > 0
    assert get_method("meta-ssl").load_config("paper").bootstrap_steps == 0


# -- trainer and CLI -------------------------------------------------------------------------------

TINY = dict(
    dataset="digits", image_size=16, width=4, proj_hidden=8, proj_dim=8, task_images=4, support_views=2,
    query_views=1, meta_batch=2, eval_episodes=10, augment="weak",
)  # fmt: skip


@pytest.mark.parametrize("backend", ["func", "higher", "autograd"])
def test_resume_equals_uninterrupted(tmp_path, backend):
    cfg = BMSSLConfig(steps=4, eval_every=2, backend=backend, **TINY)
    full = BMSSLTrainer(cfg, tmp_path / "full", progress=False)
    full.fit()
    cut = BMSSLTrainer(cfg, tmp_path / "cut", progress=False)
    cut.fit(max_steps=2)
    resumed = BMSSLTrainer(cfg, tmp_path / "cut", progress=False)
    metrics = resumed.fit()
    assert resumed.step == 4 and metrics["step"] == 4 and "val_acc" in metrics
    for (name, a), (_, b) in zip(
        full.encoder.state_dict().items(), resumed.encoder.state_dict().items()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["val_acc"] for h in full.history] == [h["val_acc"] for h in resumed.history]
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_resume_refuses_other_settings(tmp_path):
    BMSSLTrainer(BMSSLConfig(steps=2, eval_every=2, **TINY), tmp_path, progress=False).fit()
    other = BMSSLTrainer(
        BMSSLConfig(steps=4, eval_every=2, bootstrap_steps=0, **TINY), tmp_path, progress=False
    )
    with pytest.raises(UserError, match="bootstrap_steps"):
        other.fit()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="device='cuda'.*device=cpu"):
        BMSSLTrainer(BMSSLConfig(steps=1, device="cuda", **TINY), progress=False)


def test_resume_may_change_device(tmp_path):
    BMSSLTrainer(
        BMSSLConfig(steps=2, eval_every=2, device="cpu", **TINY), tmp_path, progress=False
    ).fit()
    resumed = BMSSLTrainer(
        BMSSLConfig(steps=3, eval_every=3, device="auto", **TINY), tmp_path, progress=False
    )
    assert resumed.fit()["step"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["func", "higher"])
def test_trains_on_cuda_like_on_cpu(backend):
    """Same seed, same tasks: one meta-step on the GPU gives the CPU's weights (float32 noise)."""
    cpu = BMSSLTrainer(
        BMSSLConfig(steps=1, eval_every=1, device="cpu", backend=backend, **TINY), progress=False
    )
    gpu = BMSSLTrainer(
        BMSSLConfig(steps=1, eval_every=1, device="cuda", backend=backend, **TINY), progress=False
    )
    cpu.fit()
    gpu.fit()
    assert next(gpu.encoder.parameters()).is_cuda
    for (name, a), (_, b) in zip(
        cpu.encoder.state_dict().items(), gpu.encoder.state_dict().items()
    ):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-4, msg=name)


def test_track_policy_trains_and_refreshes_running_stats():
    cfg = BMSSLConfig(steps=2, eval_every=2, bn="track", **TINY)
    trainer = BMSSLTrainer(cfg, progress=False)
    before = trainer.encoder.backbone.features[0][1].running_mean.clone()
    trainer.fit()
    assert not torch.equal(before, trainer.encoder.backbone.features[0][1].running_mean)


def test_train_bmssl_returns_the_encoder():
    encoder = train_bmssl(BMSSLConfig(steps=1, eval_every=1, **TINY), progress=False)
    assert isinstance(encoder, Encoder)
