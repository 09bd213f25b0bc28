"""BiSSLConfig (presets, validation) and BiSSLTrainer: the alternation, the upper update, the
adaptation rule, exact resume, and data parallelism on 2 CPU processes (gloo)."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bissl.bilevel import BiSSLTrainer
from bissl.config import BiSSLConfig
from bissl.objectives import pretext_loss_of_backbone
from bissl.trees import flatten, unflatten
from bissl.upper import upper_gradients
from bmssl.config import config_from_dict, load_config
from bmssl.errors import UserError
from bmssl.methods import get_method

TINY = {
    "pretext.image_size": 16,
    "pretext.width": 4,
    "pretext.proj_hidden": 16,
    "pretext.proj_dim": 8,
    "bilevel.alternations": 3,
    "bilevel.lower_steps": 2,
    "bilevel.upper_steps": 2,
    "bilevel.batch_size": 16,
    "bilevel.lower_batch_size": 16,
    "warmup.steps": 5,
    "cg.iters": 3,
    "eval_every": 2,
    "eval_batch_size": 256,
}


def tiny(overrides: dict | None = None) -> BiSSLConfig:
    return config_from_dict(BiSSLConfig, {**TINY, **(overrides or {})})


def test_presets_resolve_and_explicit_values_win() -> None:
    bissl = get_method("bissl")
    v1 = BiSSLConfig()
    assert (v1.bilevel.gamma, v1.bilevel.adapt_every, v1.bilevel.adapt_alpha) == (0.01, 100, 0.1)
    assert bissl.load_config("paper-v1") == v1
    v2 = bissl.load_config("paper-v2")
    assert (v2.bilevel.gamma, v2.bilevel.adapt_every) == (1.0, 0)
    loaded = bissl.load_config("paper-v2", ["bilevel.gamma=0.5"])
    assert loaded.bilevel.gamma == 0.5 and loaded.bilevel.adapt_every == 0
    assert {"paper-v1", "paper-v2", "cpu", "tiny", "paper"} <= set(bissl.presets)
    for preset in bissl.presets:
        bissl.load_config(preset)  # every preset loads and validates
    b = v1.bilevel
    assert (b.lam, b.lam_damp, v1.cg.iters, v1.pretext.temperature, b.clip) == (
        0.001,
        10.0,
        5,
        0.5,
        10.0,
    )
    opts = load_config(BiSSLConfig, None, ["dataset_options={num_classes: 20, per_class: 60}"])
    assert opts.dataset_options == {"num_classes": 20, "per_class": 60}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("cg.mode=diagonal", "cg.mode"),
        ("bilevel.lam=-1", "lam"),
        ("bilevel.lam=nan", "lam"),
        ("bilevel.gamma=nan", "gamma"),
        ("bilevel.gamma=inf", "gamma"),
        ("preset=paper-v3", "preset"),
        ("bilevel.adapt_alpha=2", "adapt_alpha"),
        ("cg.iters=0", "cg.iters"),
        ("cg.hvp_backend=jax", "hvp_backend"),
        ("init_from=/nonexistent/pretext.pt", "init_from"),
    ],
)
def test_validate_names_the_bad_value(override: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_config(BiSSLConfig, None, [override])


def test_fit_reports_val_acc_and_moves_both_levels() -> None:
    trainer = BiSSLTrainer.from_config(tiny(), progress=False)
    theta_p0 = flatten([p.detach().clone() for p in trainer.encoder_p.backbone.parameters()])
    theta_d0 = flatten([p.detach().clone() for p in trainer.model_d.backbone.parameters()])
    torch.testing.assert_close(theta_p0, theta_d0)  # both levels start from the pretext backbone
    metrics = trainer.fit()
    assert metrics["step"] == 3.0 and 0.0 <= metrics["val_acc"] <= 100.0
    assert {
        "val_top1",
        "val_top5",
        "val_acc_d",
        "pretext_loss",
        "upper_loss",
        "cg_rel_residual",
    } <= set(metrics)
    assert not torch.equal(
        theta_p0, flatten(list(trainer.encoder_p.backbone.parameters())).detach()
    )
    assert not torch.equal(theta_d0, flatten(list(trainer.model_d.backbone.parameters())).detach())
    assert [h["step"] for h in trainer.history] == [2.0, 3.0]


def test_upper_step_applies_the_implicit_gradient_with_sgd() -> None:
    cfg = tiny({"bilevel.upper_lr": 0.05, "bilevel.clip": 1e6, "bilevel.gamma": 0.3, "cg.iters": 4})
    trainer = BiSSLTrainer.from_config(cfg, progress=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    x1, x2 = torch.rand(8, 1, 16, 16, generator=gen), torch.rand(8, 1, 16, 16, generator=gen)
    enc, model_d = copy.deepcopy(trainer.encoder_p), copy.deepcopy(trainer.model_d)
    expected = upper_gradients(enc, model_d, (x, y), (x1, x2), cfg)
    before = [p.detach().clone() for p in trainer.model_d.parameters()]
    theta_p = [p.detach().clone() for p in trainer.encoder_p.parameters()]
    trainer.upper_step(x, y, x1, x2)
    grads = list(expected.backbone) + list(expected.head)
    for p0, g, p in zip(before, grads, trainer.model_d.parameters()):
        torch.testing.assert_close(p.detach(), p0 - 0.05 * g, rtol=1e-5, atol=1e-6)
    for p0, p in zip(theta_p, trainer.encoder_p.parameters()):
        assert torch.equal(p0, p.detach())  # the upper step never moves θ_P


def test_backbone_adaptation_rule() -> None:
    trainer = BiSSLTrainer.from_config(tiny({"bilevel.adapt_alpha": 0.25}), progress=False)
    with torch.no_grad():
        for p in trainer.encoder_p.backbone.parameters():
            p.add_(1.0)
    d0 = [p.detach().clone() for p in trainer.model_d.backbone.parameters()]
    p0 = [p.detach().clone() for p in trainer.encoder_p.backbone.parameters()]
    trainer.adapt()
    for d, a, b in zip(trainer.model_d.backbone.parameters(), d0, p0):
        torch.testing.assert_close(d.detach(), 0.75 * a + 0.25 * b)


def test_adaptation_happens_every_n_a_alternations(monkeypatch) -> None:
    trainer = BiSSLTrainer.from_config(
        tiny({"bilevel.adapt_every": 2, "bilevel.lower_steps": 0, "bilevel.upper_steps": 1}),
        progress=False,
    )
    calls = []
    monkeypatch.setattr(trainer, "adapt", lambda: calls.append(trainer.step))
    for step in range(5):
        trainer.train_step(step)
        trainer.step += 1
    assert calls == [1, 3]


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny({"bilevel.alternations": 4, "eval_every": 2, "cg.warm_start": True})
    straight = BiSSLTrainer.from_config(cfg, tmp_path / "a", progress=False)
    straight.fit()
    first = BiSSLTrainer.from_config(cfg, tmp_path / "b", progress=False)
    first.fit(max_steps=2)
    resumed = BiSSLTrainer.from_config(cfg, tmp_path / "b", progress=False)
    resumed.fit()
    assert resumed.step == 4
    for a, b in zip(
        straight.state_dict()["model_d"].values(), resumed.state_dict()["model_d"].values()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(
        straight.encoder_p.state_dict().values(), resumed.encoder_p.state_dict().values()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_multilabel_downstream_set_uses_bce_and_map(monkeypatch) -> None:
    """A multi-label view of digits (label and label+1 mod 10 both positive)."""
    import bissl.stages as stages
    from bissl.downstream import downstream_split
    from bmssl.data.base import ImageDataset

    class MultiLabel(ImageDataset):
        multilabel = True

        def __init__(self, base):
            self.base, self.classes, self.image_shape = base, base.classes, base.image_shape
            self.targets = base.targets
            self.label_matrix = torch.zeros(len(base), 10)
            for i, t in enumerate(base.targets):
                self.label_matrix[i, [t, (t + 1) % 10]] = 1

        def labels(self):
            return self.label_matrix

        def __getitem__(self, i):
            return self.base[i][0], self.label_matrix[i]

        def get_batch(self, idx):
            return self.base.get_batch(idx)

    monkeypatch.setattr(
        stages, "downstream_split", lambda *a, **k: MultiLabel(downstream_split(*a, **k))
    )
    trainer = BiSSLTrainer.from_config(
        tiny({"bilevel.alternations": 1, "eval_every": 1}), progress=False
    )
    assert trainer.multilabel and trainer.train_labels.dtype == torch.float32
    metrics = trainer.fit()
    assert metrics["val_acc"] == metrics["val_map11"] and "val_map" in metrics


# -- data parallelism ------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = tiny(
            {
                "cg.iters": 300,
                "cg.rtol": 1e-11,
                "bilevel.clip": 1e6,
                "bilevel.upper_lr": 0.1,
                "bilevel.momentum": 0.0,
                "bilevel.gamma": 0.5,
                "bilevel.lam_damp": 2000.0,
            }
        )
        trainer = BiSSLTrainer.from_config(cfg, progress=False)
        trainer.train_step(
            0
        )  # a full alternation: DDP for the lower level, all-reduce for the upper
        after_alternation = [
            p.detach().clone()
            for p in list(trainer.encoder_p.parameters()) + list(trainer.model_d.parameters())
        ]
        trainer.encoder_p.double()
        trainer.model_d.double()
        gen = torch.Generator().manual_seed(123)  # the same full batches everywhere
        x = torch.rand(2 * 6, 1, 16, 16, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (2 * 6,), generator=gen)
        p1 = torch.rand(2 * 8, 1, 16, 16, generator=gen, dtype=torch.float64)
        p2 = (p1 + 0.1 * torch.randn(p1.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
        initial = {
            "encoder_p": copy.deepcopy(trainer.encoder_p.state_dict()),
            "model_d": copy.deepcopy(trainer.model_d.state_dict()),
        }
        mine = slice(6 * rank, 6 * (rank + 1)), slice(8 * rank, 8 * (rank + 1))
        lr = trainer.upper_opt.param_groups[0]["lr"]  # cosine schedule, after one alternation
        logs = trainer.upper_step(x[mine[0]], y[mine[0]], p1[mine[1]], p2[mine[1]])
        after_upper = [p.detach().clone() for p in trainer.model_d.parameters()]
        torch.save(
            {
                "initial": initial,
                "batches": (x, y, p1, p2),
                "after_upper": after_upper,
                "after_alternation": after_alternation,
                "logs": logs,
                "lr": lr,
                "config": dataclasses.asdict(cfg),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_two_processes_apply_the_all_reduced_hypergradient(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for a, b in zip(r0["after_upper"], r1["after_upper"]):
        assert torch.equal(a, b)
    for a, b in zip(r0["after_alternation"], r1["after_alternation"]):
        assert torch.equal(a, b)

    # independent single-process answer: dense Hessian of the process-averaged pretext loss
    cfg = config_from_dict(BiSSLConfig, r0["config"])
    ref = BiSSLTrainer.from_config(
        config_from_dict(BiSSLConfig, {"warmup.steps": 0}, base=cfg), progress=False
    )
    ref.encoder_p.double().load_state_dict(r0["initial"]["encoder_p"])
    ref.model_d.double().load_state_dict(r0["initial"]["model_d"])
    enc, model_d = ref.encoder_p.train(), ref.model_d.train()
    x, y, p1, p2 = r0["batches"]
    theta_p = tuple(enc.backbone.parameters())
    theta_d = tuple(model_d.backbone.parameters())
    head = tuple(model_d.head.parameters())
    chunks = [(slice(0, 6), slice(0, 8)), (slice(6, 12), slice(8, 16))]
    fs = [pretext_loss_of_backbone(enc, p1[b], p2[b], cfg.pretext.temperature) for _, b in chunks]
    flat = flatten([p.detach() for p in theta_p])
    hess = torch.autograd.functional.hessian(
        lambda v: sum(f(unflatten(v, theta_p)) for f in fs) / 2, flat
    )
    ce = torch.nn.functional.cross_entropy
    loss_a = sum(ce(model_d.head(enc.backbone(x[a])), y[a]) for a, _ in chunks) / 2
    g = torch.autograd.grad(loss_a, head + theta_p)
    v = flatten(g[len(head) :])
    solved = torch.linalg.solve(
        torch.eye(len(v), dtype=torch.float64) + hess / (cfg.bilevel.lam + cfg.bilevel.lam_damp), v
    )
    assert float((solved - v).norm() / v.norm()) > 1e-3  # the Hessian term matters
    loss_b = sum(ce(model_d(x[a]), y[a]) for a, _ in chunks) / 2
    gb = torch.autograd.grad(loss_b, theta_d + head)
    g_theta_d = solved + cfg.bilevel.gamma * flatten(gb[: len(theta_d)])
    g_head = flatten(g[: len(head)]) + cfg.bilevel.gamma * flatten(gb[len(theta_d) :])
    start = flatten([p.detach() for p in list(theta_d) + list(head)])
    assert 0 < r0["lr"] < cfg.bilevel.upper_lr
    expected = start - r0["lr"] * torch.cat([g_theta_d, g_head])
    got = flatten(r0["after_upper"])
    assert r0["logs"]["cg_rel_residual"] < 1e-9, r0["logs"]
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_low_label_train_split_is_seeded_and_smaller_than_a_batch() -> None:
    """labels_per_class keeps that many training images per class (seeded); a split smaller
    than the upper batch is used whole instead of failing."""
    from bissl.downstream import downstream_split

    cfg = tiny({"labels_per_class": 2, "bilevel.batch_size": 32, "bilevel.alternations": 1})
    train = downstream_split(cfg, "train")
    assert len(train) == 2 * train.num_classes
    assert torch.bincount(train.labels(), minlength=train.num_classes).tolist() == [2] * 10
    again = downstream_split(cfg, "train")
    assert torch.equal(train.get_batch(range(len(train))), again.get_batch(range(len(again))))
    other = downstream_split(config_from_dict(BiSSLConfig, {"seed": 1}, base=cfg), "train")
    assert not torch.equal(train.get_batch(range(20)), other.get_batch(range(20)))
    assert len(downstream_split(cfg, "val")) > len(train)  # val and test stay whole
    metrics = BiSSLTrainer.from_config(cfg, progress=False).fit()
    assert metrics["step"] == 1.0
    with pytest.raises(UserError, match="labels_per_class"):
        downstream_split(
            config_from_dict(BiSSLConfig, {"labels_per_class": 10_000}, base=cfg), "train"
        )
