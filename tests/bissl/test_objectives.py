"""BiSSL's lower and upper objectives, the functional pretext loss, BN freezing and LARS."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bissl.lars import LARS
from bissl.objectives import (
    DownstreamModel,
    downstream_loss,
    frozen_bn_statistics,
    lower_objective,
    pretext_loss,
    pretext_loss_of_backbone,
    proximal_penalty,
    upper_objective,
)
from bmssl.errors import UserError
from bmssl.losses import nt_xent
from bmssl.nets import build_encoder

# float() of a loss that still carries its graph is deliberate here (values are compared)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture()
def nets():
    torch.manual_seed(0)
    enc = build_encoder("conv4", 1, 16, 4, "track", 16, 8)
    model_d = DownstreamModel(copy.deepcopy(enc.backbone), 3)
    with torch.no_grad():
        for p in model_d.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc, model_d


def test_proximal_penalty_value_and_gradient_reach_theta_p_only(nets) -> None:
    enc, model_d = nets
    lam = 0.37
    pen = proximal_penalty(enc.backbone, model_d.backbone, lam)
    pairs = list(zip(enc.backbone.parameters(), model_d.backbone.parameters()))
    expected = 0.5 * lam * sum(float(((p - d) ** 2).sum().detach()) for p, d in pairs)
    assert float(pen.detach()) == pytest.approx(expected, rel=1e-6)
    pen.backward()
    for p, d in pairs:
        torch.testing.assert_close(p.grad, lam * (p - d).detach())
        assert d.grad is None
    # BatchNorm buffers are not parameters: the penalty ignores them
    assert all("running" not in n for n, _ in enc.backbone.named_parameters())


def test_lower_objective_is_ntxent_plus_penalty_and_trains_the_projector(nets) -> None:
    enc, model_d = nets
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    torch.manual_seed(1)
    loss, parts = lower_objective(enc, model_d.backbone, x1, x2, lam=0.01, temperature=0.5)
    z = enc(torch.cat([x1, x2]))
    ntx = nt_xent(z[:6], z[6:], 0.5)
    pen = proximal_penalty(enc.backbone, model_d.backbone, 0.01)
    assert float(loss.detach()) == pytest.approx(float((ntx + pen).detach()), rel=1e-5)
    assert parts["pretext_loss"] == pytest.approx(float(ntx.detach()), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in enc.projector.parameters())
    assert all(p.grad is None for p in model_d.parameters())


def test_downstream_loss_uses_bce_for_multi_hot_targets() -> None:
    logits = torch.randn(4, 5)
    y = torch.tensor([0, 4, 2, 1])
    assert float(downstream_loss(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)))
    multi = torch.zeros(4, 5)
    multi[0, [0, 3]] = 1
    multi[2, 1] = 1
    bce = F.binary_cross_entropy_with_logits(logits, multi)
    assert float(downstream_loss(logits, multi)) == pytest.approx(float(bce))


@pytest.mark.parametrize("gamma", [0.0, 0.01, 1.0])
def test_upper_objective_combines_both_downstream_terms(nets, gamma: float) -> None:
    enc, model_d = nets
    enc.eval()
    model_d.eval()
    x = torch.rand(5, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 1, 0])
    total, parts = upper_objective(enc.backbone, model_d, x, y, gamma)
    a = F.cross_entropy(model_d.head(enc.backbone(x)), y)
    b = F.cross_entropy(model_d(x), y)
    assert float(total) == pytest.approx(float(a + gamma * b), rel=1e-6)
    assert ("classic_loss" in parts) == (gamma != 0)


def test_functional_pretext_loss_matches_module_and_substitutes_backbone(nets) -> None:
    enc, _ = nets
    enc.eval()  # running statistics: comparable across the two calls
    x1, x2 = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    params = tuple(enc.backbone.parameters())
    f = pretext_loss_of_backbone(enc, x1, x2, 0.5)
    assert float(f(params)) == pytest.approx(float(pretext_loss(enc, x1, x2, 0.5)), rel=1e-6)
    moved = tuple(p.detach() * 1.1 for p in params)
    other = copy.deepcopy(enc)
    with torch.no_grad():
        for p, m in zip(other.backbone.parameters(), moved):
            p.copy_(m)
    assert float(f(moved)) == pytest.approx(float(pretext_loss(other, x1, x2, 0.5)), rel=1e-6)
    # the projector is held fixed: no gradient reaches it
    f(params).backward()
    assert all(p.grad is None for p in enc.projector.parameters())
    assert all(p.grad is not None for p in enc.backbone.parameters())


def test_frozen_bn_statistics_leaves_running_stats_untouched(nets) -> None:
    enc, _ = nets
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with frozen_bn_statistics(enc):
        enc(torch.rand(8, 1, 16, 16))
    after = enc.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v)
    moms = [m.momentum for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert moms and all(m == 0.1 for m in moms)
    enc(torch.rand(8, 1, 16, 16))
    assert any(not torch.equal(after[k], before[k]) for k in before if "running_mean" in k)


def test_lars_step_follows_the_trust_ratio_rule() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    bias = torch.nn.Parameter(torch.randn(4))
    w.grad, bias.grad = torch.randn(3, 4), torch.randn(4)
    w0, b0, gw, gb = w.detach().clone(), bias.detach().clone(), w.grad.clone(), bias.grad.clone()
    lr, wd, eta, mom = 0.5, 1e-2, 1e-3, 0.9
    opt = LARS([w, bias], lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    opt.step()
    u = gw + wd * w0
    trust = eta * w0.norm() / u.norm()
    torch.testing.assert_close(w.detach(), w0 - lr * trust * u)
    torch.testing.assert_close(bias.detach(), b0 - lr * gb)  # 1-D: no decay, no trust ratio
    # second step: momentum accumulates the scaled update
    w.grad = gw.clone()
    w1 = w.detach().clone()
    opt.step()
    u1 = gw + wd * w1
    m1 = mom * (trust * u) + eta * w1.norm() / u1.norm() * u1
    torch.testing.assert_close(w.detach(), w1 - lr * m1)


def test_lars_rejects_bad_hyperparameters() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(UserError, match="momentum"):
        LARS([p], lr=0.1, momentum=1.5)
