"""The trainers' images come through the prefetching loader: workers change nothing but speed."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch

from bmssl.meta import BMSSLConfig, BMSSLTrainer
from bmssl.simclr import SimCLRConfig, SimCLRTrainer
from tests.fakes import class_names, write_class_tree

NET = dict(width=4, proj_hidden=8, proj_dim=4, image_size=16, train_protocol="unlabeled")


def _tree(root: Path) -> str:
    write_class_tree(root, class_names(6), per_class=5, size=18)
    return f"imagefolder:{root}"


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.encoder.state_dict().items()}


def _fit(trainer_cls, config) -> dict[str, torch.Tensor]:
    trainer = trainer_cls(config, out_dir=None, progress=False)
    trainer.fit()
    assert trainer.loader is None  # fit closed it
    assert not multiprocessing.active_children()  # and its workers are gone
    return _weights(trainer)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_simclr_with_loader_workers_trains_exactly_as_without(tmp_path: Path) -> None:
    data = _tree(tmp_path / "tree")
    base = dict(dataset=data, steps=3, eval_every=3, batch_size=6, device="cpu", **NET)
    _same(
        _fit(SimCLRTrainer, SimCLRConfig(workers=0, **base)),
        _fit(SimCLRTrainer, SimCLRConfig(workers=2, **base)),
    )


def test_bmssl_with_loader_workers_trains_exactly_as_without(tmp_path: Path) -> None:
    data = _tree(tmp_path / "tree")
    base = dict(
        dataset=data, steps=2, eval_every=2, task_images=3, support_views=2, query_views=1, meta_batch=2,
        device="cpu", **NET,
    )  # fmt: skip
    _same(
        _fit(BMSSLTrainer, BMSSLConfig(workers=0, **base)),
        _fit(BMSSLTrainer, BMSSLConfig(workers=2, **base)),
    )
