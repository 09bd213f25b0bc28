"""The stages around BiSSL's alternations, as functions of the config and of what earlier stages
made (:mod:`bissl.pipeline` runs them in order)::

    data -> SimCLR pretext -> [BiSSL: trainer -> head warm-up -> alternations] -> fine-tune

:class:`BiSSLData` holds the downstream splits and the pretext pool, loaded once for every stage;
:func:`pretext_encoder` trains (or reloads) the SimCLR encoder; an ``init_from`` file (a pretext
encoder, or a BiSSL checkpoint) stands in for that stage in searches and fine-tuning trials;
:func:`warm_up_head` trains φ_D on the frozen θ_D before the first alternation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl.config import BiSSLConfig
from bissl.downstream import downstream_split
from bissl.finetune import warmup_head
from bissl.objectives import DownstreamModel
from bmssl import distributed
from bmssl.checkpoints import load_checkpoint
from bmssl.data.base import ImageDataset
from bmssl.errors import UserError
from bmssl.io import atomic_write
from bmssl.nets import Encoder
from bmssl.pretrain import encoder_for, load_split
from bmssl.simclr import SimCLRTrainer


@dataclass(frozen=True)
class BiSSLData:
    """The downstream ``train``/``val``/``test`` splits and the ``pretext`` pool of one config."""

    train: ImageDataset
    val: ImageDataset
    pretext: ImageDataset
    test: ImageDataset | None = None

    @classmethod
    def load(cls, config: BiSSLConfig, test: bool = True) -> BiSSLData:
        """Load them (``test`` False: no test split); refuses downstream and pretext images of
        different shapes, since θ_P sees both."""
        train = downstream_split(config, "train")
        pretext = load_split(config.pretext_run(), "train")
        shape_d, shape_p = tuple(train.image_shape), tuple(pretext.image_shape)
        if shape_d != shape_p:
            raise UserError(
                f"downstream images {shape_d} and pretext images {shape_p} differ in shape; pick "
                "datasets with the same channels (e.g. dataset_options={channels: 3})"
            )
        held_out = downstream_split(config, "test") if test else None
        return cls(train, downstream_split(config, "val"), pretext, held_out)


def fresh_encoder(config: BiSSLConfig, pretext: ImageDataset | None = None) -> Encoder:
    """A newly initialised encoder of the config's networks, sized for the pretext images."""
    cfg = config.pretext_run()
    return encoder_for(pretext if pretext is not None else load_split(cfg, "train"), cfg)


# -- the SimCLR pretext stage ---------------------------------------------------------------------

#: SimCLR options that do not change the trained encoder (left out of the pretext cache key)
_NOT_IN_KEY = (
    "eval_every", "eval_episodes", "eval_n_way", "eval_k_shot", "log_every", "device", "workers",
    "pin_memory", "tracker", "tracking_uri",
)  # fmt: skip


def pretext_key(config: BiSSLConfig, steps: int) -> str:
    """Short hash naming a pretext run: its SimCLR settings (seed included) and step count."""
    fields = dataclasses.asdict(config.pretext_run(steps))
    for name in _NOT_IN_KEY:
        fields.pop(name, None)
    fields["steps"] = steps
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def pretext_encoder(
    config: BiSSLConfig,
    steps: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    pretext: ImageDataset | None = None,
) -> tuple[Encoder, Path | None]:
    """SimCLR-pre-trained encoder (:class:`bmssl.simclr.SimCLRTrainer`) for ``steps`` steps.

    With ``cache_dir`` the run checkpoints under ``<cache_dir>/pretext-<key>/`` (resumable) and
    the finished encoder is stored as ``<cache_dir>/pretext-<key>.pt`` (``{"encoder": ...}``),
    which later calls load instead of training. Returns the encoder and that file (which only
    rank 0 writes). ``pretext``: the pool, when the caller holds it already.
    """
    steps = config.pretext.steps if steps is None else steps
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}.pt"
        if path.is_file():
            encoder = fresh_encoder(config, pretext)
            encoder.load_state_dict(load_checkpoint(path, restore_rng=False)["encoder"])
            return encoder, path
    cfg = config.pretext_run(steps)
    if steps == 0:
        torch.manual_seed(config.seed)
        encoder = fresh_encoder(config, pretext)
    else:
        run_dir = Path(cache_dir) / f"pretext-{pretext_key(config, steps)}" if cache_dir else None
        trainer = SimCLRTrainer(cfg, run_dir, progress)
        trainer.fit()
        encoder = trainer.encoder
    if path is not None and distributed.is_main():
        state = {"encoder": encoder.state_dict(), "simclr": dataclasses.asdict(cfg)}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    return encoder, path


# -- init_from: a stored encoder (and head) in place of the pretext stage ------------------------


def init_from_weights(config: BiSSLConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The encoder's and φ_D's weights (the latter None if absent) in ``config.init_from``: a
    pretext file (``{"encoder": ..., "head"?: ...}``) or a BiSSL checkpoint (its θ_P, φ_P)."""
    if config.init_from is None:
        raise UserError(
            "this stage needs a trained encoder: set init_from to a file written by "
            "`python -m bissl pretext` or to a BiSSL run's checkpoints/last.pt"
        )
    state = load_checkpoint(config.init_from, restore_rng=False)
    if "encoder" in state:
        return state["encoder"], state.get("head")
    if isinstance(state.get("trainer"), dict) and "encoder_p" in state["trainer"]:
        return state["trainer"]["encoder_p"], None
    raise UserError(
        f"init_from={config.init_from!r} holds neither pretext weights ('encoder') nor a "
        "BiSSL checkpoint ('trainer' -> 'encoder_p')"
    )


def saved_start(
    config: BiSSLConfig, pretext: ImageDataset | None = None
) -> tuple[Encoder, dict[str, Any] | None]:
    """The encoder stored in ``config.init_from`` and φ_D's weights if it holds them (see
    :func:`init_from_weights`)."""
    weights, head = init_from_weights(config)
    encoder = fresh_encoder(config, pretext)
    encoder.load_state_dict(weights)
    return encoder, head


def load_backbone(config: BiSSLConfig) -> nn.Module:
    """The backbone stored in ``config.init_from``: the baseline path's (a pretext file) or
    BiSSL's lower backbone θ_P (a BiSSL checkpoint)."""
    return saved_start(config)[0].backbone


# -- the head warm-up stage -----------------------------------------------------------------------


def warm_up_head(config: BiSSLConfig, train: ImageDataset, model_d: DownstreamModel) -> float:
    """Stage 2: φ_D trained in place on frozen, eval-mode features of θ_D (Adam,
    ``warmup.steps`` batches of ``bilevel.batch_size``); returns the last batch's loss."""
    return warmup_head(
        model_d.backbone, model_d.head, train, config.warmup.steps, config.warmup.lr,
        config.bilevel.batch_size, config.seed,
    )  # fmt: skip
