"""What a BiSSL run's checkpoint holds, and how a run resumes from it.

:class:`BilevelState` is the resumable state of :class:`bissl.bilevel.BiSSLTrainer`: both levels'
networks, optimisers and schedules, the three batch streams, CG's warm start, and under torchrun
every process's RNG state (each draws its own views), so that a resumed run continues exactly as
an uninterrupted one, or as closely as it can under another process count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bissl.batches import BatchStream
from bissl.config import BiSSLConfig
from bissl.lars import LARS
from bissl.objectives import DownstreamModel
from bmssl.checkpoints import rng_state, seed_everything, set_rng_state
from bmssl.nets import Encoder
from bmssl.pretrain import check_same_settings
from bmssl.trainer import Trainer

#: options a BiSSL run may change when it resumes (train longer, evaluate or fine-tune otherwise)
RESUMABLE = frozenset(
    {"bilevel.alternations", "eval_every", "eval_batch_size", "log_every", "device", "finetune.*"}
)


class BilevelState(Trainer):
    """The checkpointing half of the BiSSL trainer (``save``, ``state_dict``,
    ``load_state_dict``); the trainer sets the attributes below."""

    config: BiSSLConfig
    encoder_p: Encoder
    model_d: DownstreamModel
    lower_opt: LARS
    upper_opt: torch.optim.SGD
    lower_sched: torch.optim.lr_scheduler.LambdaLR
    upper_sched: torch.optim.lr_scheduler.LambdaLR
    lower_stream: BatchStream
    hvp_stream: BatchStream
    upper_stream: BatchStream
    cg_x: tuple[torch.Tensor, ...] | None
    _rank_rng: list[Any] | None = None

    def save(self, path: str | Path | None = None) -> Path:
        """Rank 0 writes the checkpoint (with every rank's RNG state); the others wait for it."""
        target = Path(path) if path is not None else self.checkpoint_path
        if self.world > 1:
            # Each process draws its own augmentations, so a resume that gave every rank rank 0's
            # RNG would continue with other views than the uninterrupted run.
            states: list[Any] = [None] * self.world
            dist.all_gather_object(states, rng_state())
            self._rank_rng = states
        if self.rank == 0:
            target = super().save(path)
        if self.world > 1:
            dist.barrier()
        assert target is not None
        return target

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "encoder_p": self.encoder_p.state_dict(),
            "model_d": self.model_d.state_dict(),
            "lower_opt": self.lower_opt.state_dict(),
            "upper_opt": self.upper_opt.state_dict(),
            "lower_sched": self.lower_sched.state_dict(),
            "upper_sched": self.upper_sched.state_dict(),
            "streams": [
                s.state_dict() for s in (self.lower_stream, self.hvp_stream, self.upper_stream)
            ],
            "cg_x": self.cg_x,
            "rank_rng": self._rank_rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_same_settings(state.get("config", {}), self.config, self.out_dir, RESUMABLE)
        self.encoder_p.load_state_dict(state["encoder_p"])
        self.model_d.load_state_dict(state["model_d"])
        self.lower_opt.load_state_dict(state["lower_opt"])
        self.upper_opt.load_state_dict(state["upper_opt"])
        self.lower_sched.load_state_dict(state["lower_sched"])
        self.upper_sched.load_state_dict(state["upper_sched"])
        for stream, s in zip(
            (self.lower_stream, self.hvp_stream, self.upper_stream), state["streams"], strict=True
        ):
            stream.load_state_dict(s)
        cg_x = state.get("cg_x")
        self.cg_x = tuple(t.to(self.device) for t in cg_x) if cg_x is not None else None
        rank_rng = state.get("rank_rng")
        if rank_rng is not None and len(rank_rng) == self.world:
            set_rng_state(rank_rng[self.rank])
        elif self.world > 1:
            # Saved under another process count: the views cannot continue as they were.
            seed_everything(self.config.seed + 1000 * self.rank + 7 * self.lower_sched.last_epoch)
