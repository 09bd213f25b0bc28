"""BiSSL trainer: T alternations of N_L lower (pretext, LARS) and N_U upper (downstream, SGD) steps.

One ``train_step`` of :class:`bmssl.trainer.Trainer` is one alternation:

1. N_L lower steps on θ_P, φ_P: NT-Xent + λ/2 ||θ_P − θ_D||², LARS, grad-norm clip, cosine lr;
2. N_U upper steps on θ_D, φ_D with the implicit gradient of :func:`bissl.hypergrad.upper_gradients`
   (CG on (I + H/(λ+λ_damp)) x = v over a fresh pretext batch), grad-norm clip, SGD, cosine lr;
3. every N_a alternations (N_a > 0): θ_D <- (1 − α) θ_D + α θ_P (backbone parameters).

Under ``torch.distributed`` (one process per device) the lower model is wrapped in
DistributedDataParallel, the upper gradients (v, every Hessian-vector product, the classic and head
gradients) are all-reduced, so every process applies the same update; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bissl.data import (
    BatchStream,
    get_images,
    is_multilabel,
    label_tensor,
    load_downstream,
    num_outputs,
)
from bissl.downstream import cosine_lambda, evaluate, headline, warmup_head
from bissl.hypergrad import (
    CG_MODES,
    HVP_BACKENDS,
    CGResult,
    CGSettings,
    all_reduce_mean,
    upper_gradients,
)
from bissl.lars import LARS
from bissl.objectives import DownstreamModel, proximal_penalty
from bmssl.baselines import SimCLRConfig, encoder_for, load_split
from bmssl.data import SSLViews
from bmssl.data.views import STRENGTHS
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.io import seed_everything
from bmssl.losses import nt_xent
from bmssl.nets import BACKBONES, BN_POLICIES, Encoder
from bmssl.trainer import Trainer

#: γ and the backbone adaptation of the two published versions of BiSSL
PRESETS: dict[str, dict[str, Any]] = {
    # ICLR-2025 version: small classic term, θ_D pulled towards θ_P every 100 alternations
    "paper-v1": {"gamma": 0.01, "adapt_every": 100, "adapt_alpha": 0.1},
    # later version: γ = 1 and no adaptation
    "paper-v2": {"gamma": 1.0, "adapt_every": 0, "adapt_alpha": 0.0},
}


@dataclass
class BiSSLConfig:
    """Every default of the BiSSL pipeline (pretext -> head warm-up -> BiSSL -> fine-tune).

    ``gamma``, ``adapt_every`` and ``adapt_alpha`` left at None take the values of ``preset``.
    Batch sizes are per process. ``steps`` (read by the Trainer base) is ``alternations``.
    """

    # downstream data (registry name, supervised protocol) and image geometry
    dataset: str = "digits"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 28
    # pretext data (SimCLR's few-shot training split of this set) and networks
    pretext_dataset: str = "glyphs"
    pretext_root: str | None = None
    backbone: str = "conv4"
    width: int = 32
    bn: str = "track"
    proj_hidden: int = 128
    proj_dim: int = 64
    # stage 1: SimCLR pre-training (bmssl.baselines.SimCLRTrainer)
    pretext_steps: int = 300
    pretext_lr: float = 1e-3
    pretext_batch_size: int = 128
    augment: str = "default"
    # stage 2: linear head warm-up on the frozen backbone (Adam on features)
    head_warmup_steps: int = 100
    head_warmup_lr: float = 0.01
    # stage 3: BiSSL
    preset: str = "paper-v1"
    gamma: float | None = None
    adapt_every: int | None = None
    adapt_alpha: float | None = None
    lam: float = 0.001
    lam_damp: float = 10.0
    cg_iters: int = 5
    cg_mode: str = "exact"
    cg_rtol: float = 1e-4
    cg_atol: float = 0.0
    cg_warm_start: bool = False
    hvp_backend: str = "reuse"
    alternations: int = 500
    lower_steps: int = 20
    upper_steps: int = 8
    lower_lr: float = 1.0
    lower_wd: float = 1e-6
    lars_eta: float = 0.001
    upper_lr: float = 0.01
    upper_wd: float = 0.0
    momentum: float = 0.9
    warmup_frac: float = 0.0
    batch_size: int = 64
    lower_batch_size: int = 128
    temperature: float = 0.5
    clip: float = 10.0
    downstream_augment: str = "none"
    gather_negatives: bool = False
    # stage 4: fine-tuning (both paths)
    finetune_steps: int = 300
    finetune_lr: float = 0.01
    finetune_wd: float = 5e-4
    finetune_batch_size: int = 64
    baseline_matched_pretext: bool = True
    # bookkeeping
    eval_every: int = 50
    eval_batch_size: int = 512
    init_from: str | None = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.dataset_options, str):
            import yaml

            text = self.dataset_options.strip()
            parsed = (
                yaml.safe_load(text if text.startswith("{") else "{" + text + "}") if text else {}
            )
            if not isinstance(parsed, dict):
                raise UserError(
                    f"dataset_options={self.dataset_options!r} is not a mapping; write it as "
                    "'{num_classes: 20, per_class: 60}'"
                )
            self.dataset_options = parsed
        if self.preset in PRESETS:
            for key, value in PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BiSSLConfig:
        """Config of preset ``name`` ("paper-v1" or "paper-v2") with ``overrides``."""
        check_choice("preset", name, tuple(PRESETS))
        config = cls(preset=name, **overrides)
        config.validate()
        return config

    @property
    def steps(self) -> int:
        """Trainer steps: one per alternation."""
        return self.alternations

    def validate(self) -> None:
        check_choice("preset", self.preset, tuple(PRESETS))
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("bn", self.bn, BN_POLICIES)
        check_choice("cg_mode", self.cg_mode, CG_MODES)
        check_choice("hvp_backend", self.hvp_backend, HVP_BACKENDS)
        check_choice("augment", self.augment, STRENGTHS)
        check_choice("downstream_augment", self.downstream_augment, STRENGTHS)
        for name in (
            "image_size", "width", "proj_hidden", "proj_dim", "pretext_lr", "pretext_batch_size",
            "alternations", "upper_steps", "lower_lr", "upper_lr", "lars_eta", "batch_size",
            "lower_batch_size", "temperature", "clip", "finetune_lr", "finetune_batch_size",
            "eval_batch_size", "head_warmup_lr",
        ):  # fmt: skip
            check_positive(name, getattr(self, name))
        for name in (
            "lam", "cg_rtol", "cg_atol", "lower_wd", "upper_wd", "finetune_wd", "lower_steps",
            "pretext_steps", "head_warmup_steps", "finetune_steps", "eval_every", "cg_iters",
            "lam_damp",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lam + self.lam_damp <= 0:
            raise UserError(f"lam + lam_damp must be positive, got {self.lam} + {self.lam_damp}")
        if self.cg_iters < 1:
            raise UserError(f"cg_iters must be at least 1, got {self.cg_iters}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.warmup_frac < 1:
            raise UserError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.gamma is None or self.gamma < 0:
            raise UserError(f"gamma must be >= 0, got {self.gamma!r}")
        if self.adapt_every is None or self.adapt_every < 0:
            raise UserError(f"adapt_every must be >= 0 (0 = never), got {self.adapt_every!r}")
        if self.adapt_alpha is None or not 0 <= self.adapt_alpha <= 1:
            raise UserError(f"adapt_alpha must be in [0, 1], got {self.adapt_alpha!r}")
        if self.lower_batch_size < 2 or self.pretext_batch_size < 2:
            raise UserError(
                "lower_batch_size and pretext_batch_size must be at least 2 (contrastive pairs), "
                f"got {self.lower_batch_size} and {self.pretext_batch_size}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"device={self.device!r} is not supported; use auto, cpu or cuda[:N]")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise UserError(
                f"init_from={self.init_from!r} does not exist; pass a pretext checkpoint written "
                "by `python -m bissl pretext` (or leave it unset)"
            )


def simclr_config(config: BiSSLConfig, steps: int | None = None) -> SimCLRConfig:
    """The SimCLR config of the pretext stage (and of the lower level's data) of ``config``."""
    return SimCLRConfig(
        dataset=config.pretext_dataset,
        data_root=config.pretext_root,
        image_size=config.image_size,
        backbone=config.backbone,
        width=config.width,
        bn=config.bn,
        proj_hidden=config.proj_hidden,
        proj_dim=config.proj_dim,
        batch_size=config.pretext_batch_size,
        temperature=config.temperature,
        lr=config.pretext_lr,
        augment=config.augment,
        steps=max(1, config.pretext_steps if steps is None else steps),
        eval_every=0,
        eval_episodes=50,
        seed=config.seed,
    )


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BiSSLTrainer(Trainer):
    """BiSSL on ``config``; see the module docstring. ``encoder`` (pretext-trained backbone and
    projector) and ``head`` (warmed-up linear head) seed the run; without them the encoder comes
    from ``config.init_from`` (or random init) and the head is warmed up here.

    Attributes: ``encoder_p`` (θ_P, φ_P), ``model_d`` (θ_D, φ_D), ``train_set``/``val_set``
    (downstream), ``pretext_set``. ``validate`` reports ``val_acc`` = top-1 (11-point mAP for
    multi-label sets) of head_D(backbone_P(x)) on the val split, the model that is fine-tuned.
    """

    method = "bissl"

    def __init__(
        self,
        config: BiSSLConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        encoder: Encoder | None = None,
        head: nn.Linear | None = None,
    ) -> None:
        config.validate()
        self.rank, self.world = _dist()
        super().__init__(config, out_dir, progress and self.rank == 0)
        cfg = config
        self.train_set = load_downstream(
            cfg.dataset, cfg.data_root, "train", cfg.image_size, cfg.dataset_options
        )
        self.val_set = load_downstream(
            cfg.dataset, cfg.data_root, "val", cfg.image_size, cfg.dataset_options
        )
        self.train_labels = label_tensor(self.train_set)
        self.multilabel = is_multilabel(self.train_set)
        self.pretext_set = load_split(simclr_config(cfg), "train")
        shape_d = tuple(get_images(self.train_set, np.arange(1)).shape[1:])
        shape_p = tuple(self.pretext_set.image_shape)
        if shape_d != shape_p:
            raise UserError(
                f"downstream images {shape_d} and pretext images {shape_p} differ in shape; pick "
                "datasets with the same channels or set image_size"
            )

        self.encoder_p = self._initial_encoder(encoder).to(self.device)
        self.model_d = DownstreamModel(
            copy.deepcopy(self.encoder_p.backbone), num_outputs(self.train_set)
        )
        self.model_d.to(self.device)
        if head is not None:
            self.model_d.head.load_state_dict(head.state_dict())
        elif not self._load_head():
            warmup_head(
                self.model_d.backbone, self.model_d.head, self.train_set, self.train_labels,
                cfg.head_warmup_steps, cfg.head_warmup_lr, cfg.batch_size, cfg.seed, str(self.device),
            )  # fmt: skip
        if self.world > 1:
            for tensor in list(self.encoder_p.state_dict().values()) + list(
                self.model_d.state_dict().values()
            ):
                dist.broadcast(tensor, src=0)
            # same initial weights everywhere, different augmentations per process
            seed_everything(cfg.seed + 1000 * self.rank)

        self.lower_opt = LARS(
            self.encoder_p.parameters(), lr=cfg.lower_lr, momentum=cfg.momentum,
            weight_decay=cfg.lower_wd, eta=cfg.lars_eta,
        )  # fmt: skip
        self.upper_opt = torch.optim.SGD(
            self.model_d.parameters(),
            lr=cfg.upper_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.upper_wd,
        )
        n_lower = cfg.alternations * cfg.lower_steps
        n_upper = cfg.alternations * cfg.upper_steps
        self.lower_sched = torch.optim.lr_scheduler.LambdaLR(
            self.lower_opt, cosine_lambda(n_lower, int(cfg.warmup_frac * n_lower))
        )
        self.upper_sched = torch.optim.lr_scheduler.LambdaLR(
            self.upper_opt, cosine_lambda(n_upper, int(cfg.warmup_frac * n_upper))
        )
        self.lower_model: nn.Module = self.encoder_p
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.lower_model = DistributedDataParallel(self.encoder_p, device_ids=ids)

        channels, size = shape_p[0], shape_p[1]
        self.views = SSLViews(cfg.augment, size, channels)
        self.down_aug = SSLViews(cfg.downstream_augment, size, channels)
        kw = {"seed": cfg.seed, "rank": self.rank, "world": self.world}
        self.lower_stream = BatchStream(len(self.pretext_set), cfg.lower_batch_size, stream=1, **kw)
        self.hvp_stream = BatchStream(len(self.pretext_set), cfg.lower_batch_size, stream=2, **kw)
        self.upper_stream = BatchStream(len(self.train_set), cfg.batch_size, stream=3, **kw)
        self.cg_settings = CGSettings(
            maxiter=cfg.cg_iters, rtol=cfg.cg_rtol, atol=cfg.cg_atol, mode=cfg.cg_mode,  # type: ignore[arg-type]
            backend=cfg.hvp_backend,  # type: ignore[arg-type]
        )  # fmt: skip
        self.cg_x: tuple[torch.Tensor, ...] | None = None
        self.last_cg: CGResult | None = None

    # -- initial weights ---------------------------------------------------------------------
    def _initial_encoder(self, encoder: Encoder | None) -> Encoder:
        fresh = encoder_for(self.pretext_set, simclr_config(self.config))
        if encoder is not None:
            fresh.load_state_dict(encoder.state_dict())
        elif self.config.init_from is not None:
            state = torch.load(self.config.init_from, map_location="cpu", weights_only=False)
            if "encoder" not in state:
                raise UserError(f"init_from={self.config.init_from!r} holds no 'encoder' weights")
            fresh.load_state_dict(state["encoder"])
        return fresh

    def _load_head(self) -> bool:
        if self.config.init_from is None:
            return False
        state = torch.load(self.config.init_from, map_location="cpu", weights_only=False)
        if state.get("head") is None:
            return False
        self.model_d.head.load_state_dict(state["head"])
        return True

    # -- the two levels ----------------------------------------------------------------------
    def _pretext_pair(self, stream: BatchStream) -> tuple[torch.Tensor, torch.Tensor]:
        images = get_images(self.pretext_set, stream.next())
        v1, v2 = self.views.pair(images)
        return v1.to(self.device), v2.to(self.device)

    def lower_step(self) -> dict[str, float]:
        """One LARS step on NT-Xent + λ/2 ||θ_P − θ_D||² (gradients to θ_P and φ_P)."""
        cfg = self.config
        x1, x2 = self._pretext_pair(self.lower_stream)
        self.encoder_p.train()
        z = self.lower_model(torch.cat([x1, x2]))
        ntx = nt_xent(z[: len(x1)], z[len(x1) :], cfg.temperature, gather=cfg.gather_negatives)
        prox = proximal_penalty(self.encoder_p.backbone, self.model_d.backbone, cfg.lam)
        self.lower_opt.zero_grad(set_to_none=True)
        (ntx + prox).backward()
        torch.nn.utils.clip_grad_norm_(self.encoder_p.parameters(), cfg.clip)
        self.lower_opt.step()
        self.lower_sched.step()
        return {"pretext_loss": float(ntx.detach()), "prox": float(prox.detach())}

    def upper_step(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        x1_p: torch.Tensor | None = None,
        x2_p: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One SGD step of θ_D, φ_D with the implicit gradient (batches drawn when not given)."""
        cfg = self.config
        if x is None or y is None:
            idx = self.upper_stream.next()
            x = self.down_aug(get_images(self.train_set, idx))
            y = self.train_labels[idx]
        if x1_p is None or x2_p is None:
            x1_p, x2_p = self._pretext_pair(self.hvp_stream)
        self.encoder_p.train()
        self.model_d.train()
        grads = upper_gradients(
            self.encoder_p, self.model_d, x.to(self.device), y.to(self.device), x1_p, x2_p,
            lam=cfg.lam, lam_damp=cfg.lam_damp, gamma=float(cfg.gamma), temperature=cfg.temperature,
            settings=self.cg_settings, x0=self.cg_x if cfg.cg_warm_start else None,
            reduce=all_reduce_mean if self.world > 1 else None,
        )  # fmt: skip
        self.cg_x = tuple(t.detach() for t in grads.cg.x)
        self.last_cg = grads.cg
        self.upper_opt.zero_grad(set_to_none=True)
        for p, g in zip(self.model_d.backbone.parameters(), grads.backbone, strict=True):
            p.grad = g.detach().clone()
        for p, g in zip(self.model_d.head.parameters(), grads.head, strict=True):
            p.grad = g.detach().clone()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model_d.parameters(), cfg.clip)
        self.upper_opt.step()
        self.upper_sched.step()
        return {
            **grads.losses,
            "cg_rel_residual": grads.cg.relative_residual,
            "cg_iters": float(grads.cg.iterations),
            "cg_breakdown": float(grads.cg.breakdown is not None),
            "upper_grad_norm": float(gnorm),
        }

    @torch.no_grad()
    def adapt(self) -> None:
        """θ_D <- (1 − α) θ_D + α θ_P over backbone parameters."""
        alpha = float(self.config.adapt_alpha)
        for pd, pp in zip(
            self.model_d.backbone.parameters(), self.encoder_p.backbone.parameters(), strict=True
        ):
            pd.mul_(1.0 - alpha).add_(pp, alpha=alpha)

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for logs in [self.lower_step() for _ in range(cfg.lower_steps)] + [
            self.upper_step() for _ in range(cfg.upper_steps)
        ]:
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        if cfg.adapt_every > 0 and (step + 1) % cfg.adapt_every == 0:
            self.adapt()
        logs = {k: sums[k] / counts[k] for k in sums}
        if self.world > 1:
            keys = sorted(logs)
            mean = all_reduce_mean([torch.tensor([logs[k] for k in keys], dtype=torch.float64)])[0]
            logs = {k: float(v) for k, v in zip(keys, mean)}
        return logs

    # -- evaluation and checkpoints ----------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Val metrics (percent) of head_D∘backbone_P (``val_*``) and of model_D (``val_d_*``)."""
        cfg = self.config
        composite = nn.Sequential(self.encoder_p.backbone, self.model_d.head)
        mine = evaluate(composite, self.val_set, None, cfg.eval_batch_size, str(self.device))
        theirs = evaluate(self.model_d, self.val_set, None, cfg.eval_batch_size, str(self.device))
        out = {f"val_{k}": v for k, v in mine.items()}
        out.update({f"val_d_{k}": v for k, v in theirs.items()})
        out["val_acc"] = headline(mine, self.multilabel)
        out["val_acc_d"] = headline(theirs, self.multilabel)
        return out

    def save(self, path: str | Path | None = None) -> Path:
        """Rank 0 writes the checkpoint; the others wait for it."""
        target = Path(path) if path is not None else self.checkpoint_path
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
