"""BiSSL trainer: T alternations of N_L lower (pretext, LARS) and N_U upper (downstream, SGD) steps.

One ``train_step`` of :class:`bmssl.trainer.Trainer` is one alternation:

1. N_L lower steps on θ_P, φ_P: NT-Xent + λ/2 ||θ_P − θ_D||², LARS, grad-norm clip, cosine lr;
2. N_U upper steps on θ_D, φ_D with the implicit gradient of :func:`bissl.upper.upper_gradients`
   (CG on (I + H/(λ+λ_damp)) x = v over a fresh pretext batch), grad-norm clip, SGD, cosine lr;
3. every N_a alternations (N_a > 0): θ_D <- (1 − α) θ_D + α θ_P (backbone parameters).

Each alternation logs, beside the losses, numbers that say how the two levels move (one row of
``metrics.csv`` per alternation; :mod:`bissl.curves` draws them): the upper gradient norm before
clipping and the fraction of upper steps clipped, cos(x, v) of the CG solution to its right-hand
side, the CG residual and iterations, the lower gradient norm, ||θ_P − θ_D|| and the share of the
proximal gradient in the lower gradient; ``validate`` adds the composite's accuracy with batch
statistics (``val_acc_bs``) beside the eval-mode one; the first row holds the accuracies before
the first alternation (``val_acc_start``, ``val_acc_d_start``).

Under ``torch.distributed`` (one process per device) the lower model is wrapped in
DistributedDataParallel, the upper gradients (v, every Hessian-vector product, the classic and head
gradients) are all-reduced, so every process applies the same update; only rank 0 writes files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bissl.batches import BatchStream
from bissl.cg import CGResult
from bissl.config import BiSSLConfig
from bissl.finetune import evaluate, evaluate_batch_stats, headline
from bissl.lars import LARS
from bissl.objectives import DownstreamModel, lower_objective
from bissl.schedule import cosine_lambda
from bissl.stages import BiSSLData, fresh_encoder, saved_start, warm_up_head
from bissl.state import BilevelState
from bissl.trees import tree_norm
from bissl.upper import upper_gradients
from bmssl.checkpoints import seed_everything
from bmssl.data import SSLViews
from bmssl.data.base import ImageDataset
from bmssl.distributed import all_reduce_mean
from bmssl.nets import Encoder
from bmssl.precision import autocast


def parameter_groups(module: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Parameters of ``module`` by kind: ``conv`` (convolution weights and biases), ``bn_weight``
    and ``bn_bias`` (BatchNorm affine), ``linear`` (fully connected layers, e.g. a head),
    ``other``. Used to compare how far each kind moves (||Δθ_g|| / ||θ_g||)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                kind = "bn_weight" if name == "weight" else "bn_bias"
            elif isinstance(mod, nn.modules.conv._ConvNd):
                kind = "conv"
            elif isinstance(mod, nn.Linear):
                kind = "linear"
            else:
                kind = "other"
            groups.setdefault(kind, []).append(p)
    return groups


class BiSSLTrainer(BilevelState):
    """BiSSL on ``config``; see the module docstring. Built from what the pipeline holds: its
    ``data`` (:class:`bissl.stages.BiSSLData`), the pretext ``encoder`` whose weights θ_P, φ_P
    and θ_D start from (None: the seeded random init) and φ_D's weights ``head`` (None: a fresh
    head, for :func:`bissl.stages.warm_up_head`). :meth:`start` adds the warm-up;
    :meth:`from_config` makes all of it from the config alone.

    Attributes: ``encoder_p`` (θ_P, φ_P), ``model_d`` (θ_D, φ_D), ``data``. ``validate`` reports
    ``val_acc`` = top-1 (11-point mAP for multi-label sets) of head_D(backbone_P(x)) on the val
    split, the model that is fine-tuned.
    """

    method = "bissl"
    data_parallel = True

    @property
    def nonfinite_hint(self) -> str:
        b = self.config.bilevel
        return (
            f"lower bilevel.lower_lr (now {b.lower_lr}) or bilevel.upper_lr (now {b.upper_lr}), "
            f"or raise bilevel.lam_damp (now {b.lam_damp})"
        )

    def __init__(
        self,
        config: BiSSLConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        *,
        data: BiSSLData,
        encoder: Encoder | None = None,
        head: dict[str, torch.Tensor] | None = None,
    ) -> None:
        config.validate()
        super().__init__(config, out_dir, progress)
        self.data = data
        self.train_labels = data.train.labels()
        self.multilabel = data.train.multilabel
        self._rank_rng: list[Any] | None = None
        # A fresh encoder first, then the given weights: the draws after the seed stay those of
        # a run from random init, so the views of every run of one seed are the same.
        self.encoder_p = fresh_encoder(config, data.pretext)
        if encoder is not None:
            self.encoder_p.load_state_dict(encoder.state_dict())
        self.encoder_p.to(self.device)
        self.model_d = DownstreamModel(
            copy.deepcopy(self.encoder_p.backbone), data.train.num_classes
        )
        self.model_d.to(self.device)
        if head is not None:
            self.model_d.head.load_state_dict(head)
        if self.world > 1:
            # same initial weights everywhere (share_weights), different augmentations
            seed_everything(config.seed + 1000 * self.rank)
        self._optimisers()
        self.lower_model: nn.Module = self.encoder_p
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.lower_model = DistributedDataParallel(self.encoder_p, device_ids=ids)
        self._streams()
        self.cg_x: tuple[torch.Tensor, ...] | None = None
        self.last_cg: CGResult | None = None
        self._start: dict[str, float] = {}

    @classmethod
    def start(
        cls,
        config: BiSSLConfig,
        data: BiSSLData,
        encoder: Encoder | None,
        out_dir: str | Path | None = None,
        progress: bool = True,
        head: dict[str, torch.Tensor] | None = None,
    ) -> BiSSLTrainer:
        """The trainer at its first alternation: built, φ_D given (``head``) or warmed up on the
        frozen θ_D (:func:`bissl.stages.warm_up_head`), every process holding rank 0's weights."""
        trainer = cls(config, out_dir, progress, data=data, encoder=encoder, head=head)
        if head is None:
            warm_up_head(config, data.train, trainer.model_d)
        trainer.share_weights()
        return trainer

    @classmethod
    def from_config(
        cls, config: BiSSLConfig, out_dir: str | Path | None = None, progress: bool = True
    ) -> BiSSLTrainer:
        """:meth:`start` on the config's data (no test split) and on the encoder (and head) in
        ``init_from``; without it, from random init (what searches and tests train)."""
        data = BiSSLData.load(config, test=False)
        if config.init_from is None:
            return cls.start(config, data, None, out_dir, progress)
        encoder, head = saved_start(config, data.pretext)
        return cls.start(config, data, encoder, out_dir, progress, head=head)

    def _optimisers(self) -> None:
        bil = self.config.bilevel
        # The public code's LARS has no exclusion filters: BN affine parameters and biases get the
        # trust ratio too. Excluded, they step with the raw lr (1.0), far larger than the
        # η·||p|| steps of the weights (docs/bissl_diagnostics.md).
        self.lower_opt = LARS(
            self.encoder_p.parameters(), lr=bil.lower_lr, momentum=bil.momentum,
            weight_decay=bil.lower_weight_decay, eta=bil.lars_eta, exclude_1d=bil.lars_exclude_1d,
        )  # fmt: skip
        self.upper_opt = torch.optim.SGD(
            self.model_d.parameters(), lr=bil.upper_lr, momentum=bil.momentum,
            weight_decay=bil.upper_weight_decay,
        )  # fmt: skip
        n_lower = bil.alternations * bil.lower_steps
        n_upper = bil.alternations * bil.upper_steps
        self.lower_sched = torch.optim.lr_scheduler.LambdaLR(
            self.lower_opt, cosine_lambda(n_lower, int(bil.warmup_frac * n_lower))
        )
        self.upper_sched = torch.optim.lr_scheduler.LambdaLR(
            self.upper_opt, cosine_lambda(n_upper, int(bil.warmup_frac * n_upper))
        )

    def _streams(self) -> None:
        cfg, bil = self.config, self.config.bilevel
        channels, size = self.data.pretext.image_shape[0], self.data.pretext.image_shape[1]
        self.views = SSLViews(cfg.pretext.augment, size, channels)
        self.down_aug = SSLViews(bil.downstream_augment, size, channels)
        kw = {"seed": cfg.seed, "rank": self.rank, "world": self.world}
        n_pretext, n_train = len(self.data.pretext), len(self.data.train)
        self.lower_stream = BatchStream(n_pretext, bil.lower_batch_size, stream=1, **kw)
        self.hvp_stream = BatchStream(n_pretext, bil.lower_batch_size, stream=2, **kw)
        # A low-label train split may hold fewer images than a batch: take them all.
        upper_batch = min(bil.batch_size, n_train // self.world)
        self.upper_stream = BatchStream(n_train, upper_batch, stream=3, **kw)

    def share_weights(self) -> None:
        """Every process takes rank 0's θ_P, φ_P, θ_D and φ_D (no-op in one process)."""
        if self.world > 1:
            states = (self.encoder_p.state_dict(), self.model_d.state_dict())
            for tensor in [t for state in states for t in state.values()]:
                dist.broadcast(tensor, src=0)

    @property
    def train_set(self) -> ImageDataset:
        return self.data.train

    @property
    def val_set(self) -> ImageDataset:
        return self.data.val

    # -- the two levels ----------------------------------------------------------------------
    def _pretext_pair(self, stream: BatchStream) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.data.pretext.get_batch(stream.next())
        v1, v2 = self.views.pair(images)
        return v1.to(self.device), v2.to(self.device)

    def lower_step(self) -> dict[str, float]:
        """One LARS step on NT-Xent + λ/2 ||θ_P − θ_D||² (gradients to θ_P and φ_P)."""
        cfg = self.config
        x1, x2 = self._pretext_pair(self.lower_stream)
        self.encoder_p.train()
        # The lower level is first order: it follows the pretext stage's precision (the
        # Hessian-vector products of the upper step stay float32).
        with autocast(self.device, cfg.pretext.precision):
            loss, parts = lower_objective(
                self.encoder_p, self.model_d.backbone, x1, x2, cfg.bilevel.lam,
                cfg.pretext.temperature, model=self.lower_model,
                gather=cfg.bilevel.gather_negatives,
            )  # fmt: skip
        self.lower_opt.zero_grad(set_to_none=True)
        loss.backward()
        prox_grad = self._proximal_gradient_norm()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.encoder_p.parameters(), cfg.bilevel.clip))
        self.lower_opt.step()
        self.lower_sched.step()
        return {
            **parts,
            "lower_grad_norm": gnorm,
            "lower_clipped": float(gnorm > cfg.bilevel.clip),
            # ||λ(θ_P − θ_D)|| against the whole lower gradient: how much the coupling steers
            "prox_grad_share": prox_grad / gnorm if gnorm > 0 else 0.0,
        }

    @torch.no_grad()
    def _proximal_gradient_norm(self) -> float:
        """||∇_θP λ/2||θ_P − θ_D||²|| = λ·||θ_P − θ_D|| (closed form, no extra backward)."""
        return self.config.bilevel.lam * self.theta_distance()

    @torch.no_grad()
    def theta_distance(self) -> float:
        """||θ_P − θ_D|| over backbone parameters (BN buffers excluded, like the penalty)."""
        pairs = zip(
            self.encoder_p.backbone.parameters(), self.model_d.backbone.parameters(), strict=True
        )
        return tree_norm([p - d for p, d in pairs])

    def upper_step(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        x1_p: torch.Tensor | None = None,
        x2_p: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One SGD step of θ_D, φ_D with the implicit gradient (batches drawn when not given)."""
        cfg, bil = self.config, self.config.bilevel
        if x is None or y is None:
            idx = self.upper_stream.next()
            x = self.down_aug(self.train_set.get_batch(idx))
            y = self.train_labels[idx]
        if x1_p is None or x2_p is None:
            x1_p, x2_p = self._pretext_pair(self.hvp_stream)
        self.encoder_p.train()
        self.model_d.train()
        grads = upper_gradients(
            self.encoder_p,
            self.model_d,
            (x.to(self.device), y.to(self.device)),
            (x1_p, x2_p),
            cfg,
            x0=self.cg_x if cfg.cg.warm_start else None,
            reduce=all_reduce_mean if self.world > 1 else None,
        )
        self.cg_x = tuple(t.detach() for t in grads.cg.x)
        self.last_cg = grads.cg
        self.upper_opt.zero_grad(set_to_none=True)
        for p, g in zip(self.model_d.backbone.parameters(), grads.backbone, strict=True):
            p.grad = g.detach().clone()
        for p, g in zip(self.model_d.head.parameters(), grads.head, strict=True):
            p.grad = g.detach().clone()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model_d.parameters(), bil.clip))
        self.upper_opt.step()
        self.upper_sched.step()
        logs = {
            **grads.losses,
            "cg_rel_residual": grads.cg.relative_residual,
            "cg_iters": float(grads.cg.iterations),
            "cg_breakdown": float(grads.cg.breakdown is not None),
            "upper_grad_norm": gnorm,
            "upper_grad_norm_clipped": min(gnorm, bil.clip),
            "upper_clipped": float(gnorm > bil.clip),
            **grads.diagnostics(),
        }
        if grads.cg.true_residual is not None and grads.cg.b_norm > 0:
            logs["cg_true_rel_residual"] = grads.cg.true_residual / grads.cg.b_norm
        return logs

    @torch.no_grad()
    def adapt(self) -> None:
        """θ_D <- (1 − α) θ_D + α θ_P over backbone parameters."""
        alpha = self.config.bilevel.adapt_alpha
        for pd, pp in zip(
            self.model_d.backbone.parameters(), self.encoder_p.backbone.parameters(), strict=True
        ):
            pd.mul_(1.0 - alpha).add_(pp, alpha=alpha)

    def train_step(self, step: int) -> dict[str, float]:
        bil = self.config.bilevel
        if step == 0 and not self.record.rows:
            # the accuracies the run starts from, for the first row of metrics.csv
            start = self.validate()
            self._start = {
                "val_acc_start": start["val_acc"],
                "val_acc_d_start": start["val_acc_d"],
                "val_acc_bs_start": start["val_acc_bs"],
            }
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for logs in [self.lower_step() for _ in range(bil.lower_steps)] + [
            self.upper_step() for _ in range(bil.upper_steps)
        ]:
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        if bil.adapt_every > 0 and (step + 1) % bil.adapt_every == 0:
            self.adapt()
        logs = {k: sums[k] / counts[k] for k in sums}
        logs["theta_dist"] = self.theta_distance()
        if self.world > 1:
            keys = sorted(logs)
            mean = all_reduce_mean([torch.tensor([logs[k] for k in keys], dtype=torch.float64)])[0]
            logs = {k: float(v) for k, v in zip(keys, mean)}
        return logs

    # -- evaluation and checkpoints ----------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Val metrics (percent) of head_D∘backbone_P (``val_*``) and of model_D (``val_d_*``),
        in eval mode; ``val_acc_bs``: the composite with batch statistics (batches of
        ``eval_batch_size``, running statistics untouched), the normalisation its upper-level
        gradient is computed with under ``bilevel.upper_bn=train``."""
        cfg = self.config
        composite = nn.Sequential(self.encoder_p.backbone, self.model_d.head)
        mine = evaluate(composite, self.val_set, cfg.eval_batch_size)
        theirs = evaluate(self.model_d, self.val_set, cfg.eval_batch_size)
        batch_stats = evaluate_batch_stats(composite, self.val_set, cfg.eval_batch_size)
        out = {f"val_{k}": v for k, v in mine.items()}
        out.update({f"val_d_{k}": v for k, v in theirs.items()})
        out["val_acc"] = headline(mine, self.multilabel)
        out["val_acc_d"] = headline(theirs, self.multilabel)
        out["val_acc_bs"] = headline(batch_stats, self.multilabel)
        return out

    def _log_row(self, writer: Any, extra: dict[str, float]) -> None:
        # The first row of metrics.csv also carries the accuracies before the first alternation.
        if not self.record.rows and self._start:
            extra = {**self._start, **extra}
        super()._log_row(writer, extra)

    def backbone(self) -> nn.Module:
        """θ_P, the backbone BiSSL hands to fine-tuning."""
        return self.encoder_p.backbone

    @classmethod
    def backbone_from_state(cls, config: BiSSLConfig, state: dict[str, Any]) -> nn.Module:
        encoder = fresh_encoder(config)
        encoder.load_state_dict(state["encoder_p"])
        return encoder.backbone
