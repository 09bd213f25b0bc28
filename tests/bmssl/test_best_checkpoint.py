"""``best.pt`` is the checkpoint of the best validation so far, held as a hard link to
``last.pt`` when both are the same step (no second full copy of the weights on disk)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bmssl.checkpoints import load_checkpoint
from bmssl.simclr import SimCLRConfig, SimCLRTrainer


def test_best_is_a_link_to_last_until_a_later_step_does_worse(tmp_path: Path) -> None:
    config = SimCLRConfig(
        dataset="digits", steps=4, batch_size=8, width=4, proj_hidden=8, proj_dim=4,
        image_size=16, device="cpu",
    )  # fmt: skip
    trainer = SimCLRTrainer(config, out_dir=tmp_path / "run", progress=False)
    last, best = trainer.checkpoint_path, trainer.best_path
    assert last is not None and best is not None

    trainer.step = 2
    trainer._save_all({"val_acc": 0.5, "step": 2})
    assert os.stat(last).st_ino == os.stat(best).st_ino

    trainer.step = 4
    with torch.no_grad():
        next(trainer.encoder.parameters()).add_(1.0)
    trainer._save_all({"val_acc": 0.4, "step": 4})
    assert os.stat(last).st_ino != os.stat(best).st_ino
    saved_best, saved_last = load_checkpoint(best), load_checkpoint(last)
    assert (saved_best["step"], saved_best["best_val"]) == (2, 0.5)
    assert saved_last["step"] == 4
    name = next(iter(saved_best["trainer"]["encoder"]))
    assert not torch.equal(
        saved_best["trainer"]["encoder"][name], saved_last["trainer"]["encoder"][name]
    )
