"""What docs/bissl_diagnostics.md rests on: the lower LARS on every tensor (public code), the BN
mode of the composite forward, the batch-statistics evaluation, and the per-alternation numbers
a BiSSL run logs (checked against independent computations)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bissl.bilevel import BiSSLTrainer, parameter_groups
from bissl.config import BiSSLConfig
from bissl.curves import PANELS, plot_bissl_curves, read_rows
from bissl.finetune import evaluate_batch_stats
from bissl.objectives import DownstreamModel, upper_bn_mode
from bissl.trees import flatten, tree_cosine
from bissl.upper import upper_gradients
from bmssl.config import config_from_dict
from bmssl.errors import UserError
from bmssl.nets import build_encoder
from tests.bissl.test_bilevel import TINY as BILEVEL_TINY

# The bilevel tests' tiny config, with fewer alternations and validation every alternation.
TINY = {**BILEVEL_TINY, "bilevel.alternations": 2, "eval_every": 1}


def tiny(overrides: dict | None = None) -> BiSSLConfig:
    return config_from_dict(BiSSLConfig, {**TINY, **(overrides or {})})


def _two_iterations(config: BiSSLConfig) -> BiSSLConfig:
    """``config`` with CG run for exactly 2 iterations (no tolerance)."""
    return config_from_dict(BiSSLConfig, {"cg.iters": 2, "cg.rtol": 0.0}, base=config)


def _bn_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _running(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in _bn_layers(module) for t in (m.running_mean, m.running_var)]


# -- the lower LARS --------------------------------------------------------------------------


def test_lower_lars_scales_every_tensor_like_the_public_code() -> None:
    """First LARS step (momentum buffer = the scaled update): ||Δp|| = lr·η·||p|| for every
    tensor, BN affine and biases included, whatever the gradient's size."""
    cfg = tiny({"bilevel.lower_lr": 0.7, "bilevel.lower_weight_decay": 0.0})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    assert cfg.bilevel.lars_exclude_1d is False
    before = [p.detach().clone() for p in trainer.encoder_p.parameters()]
    trainer.lower_step()
    eta = cfg.bilevel.lars_eta
    one_d = 0
    for p0, p in zip(before, trainer.encoder_p.parameters()):
        if p.grad is None or float(p.grad.norm()) == 0 or float(p0.norm()) == 0:
            continue
        one_d += p.ndim == 1
        moved = float((p.detach() - p0).norm())
        assert moved == pytest.approx(0.7 * eta * float(p0.norm()), rel=1e-4)
    assert one_d > 0  # BN weights and biases were among the checked tensors


def test_lars_exclude_1d_lets_bn_parameters_step_with_the_raw_lr() -> None:
    cfg = tiny({"bilevel.lower_lr": 0.7, "bilevel.lars_exclude_1d": True, "bilevel.clip": 1e9})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.encoder_p.named_parameters()}
    trainer.lower_step()
    bn = {n for n, m in trainer.encoder_p.named_modules() if m in _bn_layers(trainer.encoder_p)}
    checked = 0
    for name, p in trainer.encoder_p.named_parameters():
        if name.rsplit(".", 1)[0] in bn and p.grad is not None:
            torch.testing.assert_close(p.detach(), before[name] - 0.7 * p.grad)
            checked += 1
    assert checked > 0


# -- BatchNorm of the composite forward ------------------------------------------------------


@pytest.fixture()
def encoder():
    torch.manual_seed(0)
    enc = build_encoder("conv4", 1, 16, 4, "track", 16, 8)
    enc.train()
    with torch.no_grad():  # running statistics unlike any batch, so the modes differ
        for m in _bn_layers(enc):
            m.running_mean.fill_(0.3)
            m.running_var.fill_(2.0)
    return enc


@pytest.mark.parametrize("mode", ["train", "frozen", "eval"])
def test_upper_bn_mode_normalisation_and_running_statistics(encoder, mode: str) -> None:
    x = torch.rand(8, 1, 16, 16)
    bb = encoder.backbone
    reference = copy.deepcopy(bb)
    reference.train(mode != "eval")
    expected = reference(x)  # a train-mode reference updates its own copy's statistics
    stats0 = _running(bb)
    with upper_bn_mode(bb, mode):
        out = bb(x)
    torch.testing.assert_close(out, expected)
    moved = any(not torch.equal(a, b) for a, b in zip(_running(bb), stats0))
    assert moved == (mode == "train")
    assert all(m.training for m in bb.modules())  # every mode restored
    with pytest.raises(ValueError, match="upper BN mode"), upper_bn_mode(bb, "sync"):
        pass


def test_upper_gradients_eval_mode_composite_is_the_eval_model_gradient(encoder) -> None:
    """v with composite_bn=eval is ∇_θP CE(head(backbone_P.eval()(x))), computed here directly."""
    model_d = DownstreamModel(copy.deepcopy(encoder.backbone), 3)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 1, 16, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2])
    x1, x2 = torch.rand(6, 1, 16, 16, generator=gen), torch.rand(6, 1, 16, 16, generator=gen)
    stats0 = _running(encoder)
    cfg = tiny({"bilevel.lam_damp": 50.0, "bilevel.gamma": 0.0, "bilevel.upper_bn": "eval"})
    got = upper_gradients(encoder, model_d, (x, y), (x1, x2), _two_iterations(cfg))
    assert all(torch.equal(a, b) for a, b in zip(_running(encoder), stats0))
    bb = copy.deepcopy(encoder.backbone).eval()
    loss = F.cross_entropy(model_d.head(bb(x)), y)
    v = flatten(torch.autograd.grad(loss, tuple(bb.parameters())))
    torch.testing.assert_close(flatten(got.v), v)
    with pytest.raises(UserError, match="upper_bn"):
        tiny({"bilevel.upper_bn": "sync"}).validate()


def test_evaluate_batch_stats_is_a_train_mode_forward_that_moves_nothing(encoder) -> None:
    class Set:
        multilabel = False
        difficult_matrix = None

        def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.x)

        def get_batch(self, idx):
            return self.x[torch.as_tensor(idx)]

        def labels(self) -> torch.Tensor:
            return self.y

    gen = torch.Generator().manual_seed(3)
    data = Set(torch.rand(9, 1, 16, 16, generator=gen), torch.randint(0, 3, (9,), generator=gen))
    net = torch.nn.Sequential(encoder.backbone, torch.nn.Linear(encoder.backbone.out_dim, 3))
    net.eval()
    stats0 = _running(net)
    whole = evaluate_batch_stats(net, data, batch_size=64)
    reference = copy.deepcopy(net).train()
    acc = float((reference(data.x).argmax(1) == data.y).float().mean()) * 100
    assert whole["top1"] == pytest.approx(acc)
    assert all(torch.equal(a, b) for a, b in zip(_running(net), stats0))
    assert not net.training  # mode restored
    evaluate_batch_stats(net, data, batch_size=8)  # 9 = 5 + 4: no batch of one image


# -- the numbers a run logs ------------------------------------------------------------------


def test_upper_step_logs_clipping_and_the_cosine_to_the_plain_gradient() -> None:
    cfg = tiny({"bilevel.clip": 1e-3, "bilevel.gamma": 0.5, "cg.check_residual": True})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    x1, x2 = torch.rand(8, 1, 16, 16, generator=gen), torch.rand(8, 1, 16, 16, generator=gen)
    enc, model_d = copy.deepcopy(trainer.encoder_p), copy.deepcopy(trainer.model_d)
    expected = upper_gradients(enc, model_d, (x, y), (x1, x2), cfg)
    logs = trainer.upper_step(x, y, x1, x2)
    full = flatten(list(expected.backbone) + list(expected.head))
    assert logs["upper_grad_norm"] == pytest.approx(float(full.norm()), rel=1e-5)
    assert logs["upper_clipped"] == 1.0 and logs["upper_grad_norm_clipped"] == 1e-3
    cos = F.cosine_similarity(flatten(expected.cg.x), flatten(expected.v), dim=0)
    assert logs["cg_cos"] == pytest.approx(float(cos), abs=1e-6)
    plain = flatten(expected.v) + 0.5 * (flatten(expected.backbone) - flatten(expected.cg.x))
    cos_plain = F.cosine_similarity(flatten(expected.backbone), plain, dim=0)
    assert logs["upper_cos_plain"] == pytest.approx(float(cos_plain), abs=1e-5)
    assert expected.cg.true_residual is not None
    true_rel = expected.cg.true_residual / expected.cg.b_norm
    assert logs["cg_true_rel_residual"] == pytest.approx(true_rel, rel=1e-4)
    assert tree_cosine((torch.ones(3),), (-torch.ones(3),)) == pytest.approx(-1.0)
    assert tree_cosine((torch.zeros(3),), (torch.ones(3),)) == 0.0


def test_lower_step_logs_the_proximal_gradient_share() -> None:
    cfg = tiny({"bilevel.lam": 0.5, "bilevel.clip": 1e9})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    with torch.no_grad():
        for p in trainer.model_d.backbone.parameters():
            p.add_(0.1)
    dist = math.sqrt(
        sum(
            float(((p - d).detach() ** 2).sum())
            for p, d in zip(
                trainer.encoder_p.backbone.parameters(), trainer.model_d.backbone.parameters()
            )
        )
    )
    assert trainer.theta_distance() == pytest.approx(dist, rel=1e-6)
    logs = trainer.lower_step()
    grads = [p.grad for p in trainer.encoder_p.parameters() if p.grad is not None]
    total = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert logs["lower_grad_norm"] == pytest.approx(total, rel=1e-5)
    assert logs["prox_grad_share"] == pytest.approx(0.5 * dist / total, rel=1e-5)
    assert logs["lower_clipped"] == 0.0


def test_parameter_groups_sort_every_parameter_by_kind() -> None:
    torch.manual_seed(0)
    enc = build_encoder("conv4", 1, 16, 4, "track", 16, 8)
    model = DownstreamModel(enc.backbone, 3)
    groups = parameter_groups(model)
    assert {"conv", "bn_weight", "bn_bias", "linear"} <= set(groups)
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    assert groups["linear"][0] is model.head.weight
    assert all(p.ndim == 1 for p in groups["bn_bias"] + groups["bn_weight"])


def test_run_writes_start_accuracies_and_the_diagnostic_curves(tmp_path: Path) -> None:
    trainer = BiSSLTrainer.from_config(tiny(), tmp_path, progress=False)
    trainer.fit()
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1.0, 2.0]
    assert {"val_acc_start", "val_acc_d_start", "val_acc_bs_start"} <= set(rows[0])
    assert "val_acc_start" not in rows[1]
    assert rows[0]["val_acc_start"] == rows[0]["val_acc_d_start"]  # θ_D starts as θ_P
    for key in ("val_acc_bs", "cg_cos", "upper_clipped", "prox_grad_share", "theta_dist"):
        assert key in rows[1]
    png = plot_bissl_curves(tmp_path / "metrics.csv", tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert len(PANELS) == 6


@pytest.mark.parametrize("backend", ["reuse", "recompute"])
def test_hvp_forwards_update_running_statistics_only_when_asked(encoder, backend: str) -> None:
    """The public code's train-mode Hessian-vector products move θ_P's running statistics; the
    default leaves them alone. Batch statistics normalise either way: same gradients."""
    model_d = DownstreamModel(copy.deepcopy(encoder.backbone), 3)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(6, 1, 16, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2])
    x1, x2 = torch.rand(6, 1, 16, 16, generator=gen), torch.rand(6, 1, 16, 16, generator=gen)
    stats0 = _running(encoder)
    got = {}
    for update in (False, True):
        enc = copy.deepcopy(encoder)
        cfg = tiny(
            {"bilevel.lam_damp": 50.0, "bilevel.gamma": 0.0, "bilevel.upper_bn": "frozen",
             "cg.hvp_backend": backend, "cg.hvp_updates_bn": update}
        )  # fmt: skip
        got[update] = upper_gradients(enc, model_d, (x, y), (x1, x2), _two_iterations(cfg))
        moved = any(not torch.equal(a, b) for a, b in zip(_running(enc), stats0))
        assert moved == update
    torch.testing.assert_close(flatten(got[True].backbone), flatten(got[False].backbone))
