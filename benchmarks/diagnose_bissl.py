"""What BiSSL does to its two networks, alternation by alternation, on the cpu table profile.

Runs the trainer's own code (``bissl.bilevel.BiSSLTrainer.train_step``: the lower LARS steps,
the upper steps with ``bissl.upper.upper_gradients``) on the configuration of one cell of
``reproduce/bissl_table.py`` (preset ``cpu``, digits with 3 training labels per class) and logs,
after every alternation t:

- validation top-1 of the composite head_D∘θ_P in eval mode (running statistics; what
  ``validate`` reports and the table's runs draw) and with batch statistics (the normalisation of
  its train-mode upper-level gradient), and of model_D = head_D∘θ_D;
- drift of θ_P's BatchNorm running statistics from their values at the start of BiSSL,
  ||μ_t − μ_0|| / ||μ_0|| and ||σ²_t − σ²_0|| / ||σ²_0|| over every BN layer of the backbone;
- the lower (NT-Xent, λ/2||θ_P − θ_D||²) and upper (CE of the composite, CE of model_D) losses,
  the proximal term's share of the lower objective prox / (NT-Xent + prox), ||θ_P − θ_D||, and
  the proximal gradient's share λ||θ_P − θ_D|| / ||∇ lower||;
- the upper gradient norm before and after clipping and the fraction of upper steps clipped;
- per parameter group g (conv, BN weight, BN bias, head) the relative move over the alternation
  ||θ_g,t − θ_g,t−1|| / ||θ_g,t−1||, for θ_D (with its head) and θ_P;
- the CG solve: relative residual (recurrence and true ||v − Ax|| / ||v||), iterations, and
  cos(x, v) between the implicit gradient x = (I + H/(λ+λ_damp))⁻¹ v and the plain gradient v.

Each variant (``--ablations``: named sets of ``key=value`` overrides, one change at a time
against the default) runs for every seed; ``--finetune`` then fine-tunes θ_P as the table does
and reports its test top-1. Results go to ``<out>/<tag>.json``; the script prints the per-
alternation table of the first run and one summary line per variant (mean and per-seed).

    python benchmarks/diagnose_bissl.py                                  # default, seed 0
    python benchmarks/diagnose_bissl.py --seeds 0 1 --ablations bn --finetune
    python benchmarks/diagnose_bissl.py --ablations all --seeds 0 1 --finetune \\
        bilevel.lars_exclude_1d=true --tag before-fix                      # against another base
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bissl.bilevel import BiSSLTrainer, parameter_groups  # noqa: E402
from bissl.config import BiSSLConfig  # noqa: E402
from bissl.finetune import finetune  # noqa: E402
from bissl.stages import BiSSLData, pretext_encoder  # noqa: E402
from bissl.trees import tree_norm  # noqa: E402
from bmssl.methods import get_method  # noqa: E402

#: the cell of the cpu table: preset cpu, digits, 3 training labels per class
PROFILE = ["dataset=digits", "labels_per_class=3"]

#: one change at a time against the default (each value: the overrides of that variant)
ABLATIONS: dict[str, dict[str, list[str]]] = {
    "lars": {
        "lars-exclude-1d": ["bilevel.lars_exclude_1d=true"],
        "lars-all-tensors": ["bilevel.lars_exclude_1d=false"],
    },
    "lower": {
        # θ_P's parameters (nearly) fixed: what moves is its BN running statistics and head_D
        "lower-lr-1e-9": ["bilevel.lower_lr=1e-9"],
        "lower-lr-0.1": ["bilevel.lower_lr=0.1"],
    },
    "bn": {
        "upper-bn-frozen": ["bilevel.upper_bn=frozen"],
        "upper-bn-eval": ["bilevel.upper_bn=eval"],
        # the public code: every product recomputes a train-mode forward that updates statistics
        "hvp-updates-bn (public)": ["cg.hvp_updates_bn=true", "cg.hvp_backend=recompute"],
    },
    "upper": {
        "upper-lr-0.001": ["bilevel.upper_lr=0.001"],
        "upper-lr-0.015-wd-0.01 (ICLR)": [
            "bilevel.upper_lr=0.015",
            "bilevel.upper_weight_decay=0.01",
        ],
        "upper-lr-0.05-wd-5e-4 (ICML)": [
            "bilevel.upper_lr=0.05",
            "bilevel.upper_weight_decay=0.0005",
        ],
        "no-clip (both levels)": ["bilevel.clip=1e9"],
        "momentum-0 (both levels)": ["bilevel.momentum=0"],
    },
    "coupling": {
        "lam-0.01": ["bilevel.lam=0.01"],
        "lam-0.1": ["bilevel.lam=0.1"],
        "lam-1": ["bilevel.lam=1"],
        "lam_damp-10 (public)": ["bilevel.lam_damp=10"],
        "lam_damp-200": ["bilevel.lam_damp=200"],
        "gamma-1 (paper-v2)": ["bilevel.gamma=1", "bilevel.adapt_every=0"],
    },
    "cg": {
        "cg-iters-1": ["cg.iters=1"],
        "cg-iters-20": ["cg.iters=20", "cg.rtol=0"],
        "cg-layerwise (public)": ["cg.mode=layerwise"],
    },
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--ablations",
        default="",
        help=f"comma-separated groups ({', '.join(ABLATIONS)}), variant names, or 'all'; "
        "the default run is always included",
    )
    p.add_argument("--alternations", type=int, default=None, help="default: the preset's")
    p.add_argument("--finetune", action="store_true", help="fine-tune θ_P; report test top-1")
    p.add_argument("--pretext-cache", default="results/bissl_table/cpu/pretext")
    p.add_argument("--out", default="results/diagnose_bissl")
    p.add_argument("--tag", default="diagnose")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--trace",
        action="store_true",
        help="also trace the first alternation step by step: composite val (eval mode / batch "
        "stats) after each of its lower and upper steps",
    )
    p.add_argument("overrides", nargs="*", help="key=value applied to every variant (the base)")
    return p.parse_args(argv)


def variants(spec: str) -> dict[str, list[str]]:
    """``{"default": []}`` plus the variants named by ``spec``."""
    chosen: dict[str, list[str]] = {"default": []}
    every = {name: ov for group in ABLATIONS.values() for name, ov in group.items()}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item == "all":
            chosen.update(every)
        elif item in ABLATIONS:
            chosen.update(ABLATIONS[item])
        elif item in every:
            chosen[item] = every[item]
        else:
            raise SystemExit(f"unknown ablation {item!r}; groups: {', '.join(ABLATIONS)}")
    return chosen


# -- measurements -------------------------------------------------------------------------------


def bn_running_stats(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of the running means and variances of every BatchNorm in ``module``."""
    means, variances = [], []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            assert m.running_var is not None
            means.append(m.running_mean.detach().clone())
            variances.append(m.running_var.detach().clone())
    return means, variances


def relative_change(now: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    """||now − before|| / ||before|| over the concatenations (nan without tensors)."""
    base = tree_norm(before)
    if not before or base == 0:
        return float("nan")
    return tree_norm([a - b for a, b in zip(now, before, strict=True)]) / base


def snapshot(module: nn.Module) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in ps] for k, ps in parameter_groups(module).items()}


def group_moves(module: nn.Module, before: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """||Δθ_g|| / ||θ_g|| per group since ``before`` (the head's Linear reported as ``head``)."""
    now = snapshot(module)
    return {
        ("head" if k == "linear" else k): relative_change(now[k], before[k]) for k in sorted(now)
    }


def measure(trainer: BiSSLTrainer, bn0: tuple[list[torch.Tensor], list[torch.Tensor]]) -> dict:
    val = trainer.validate()
    means, variances = bn_running_stats(trainer.encoder_p.backbone)
    return {
        "val_acc": val["val_acc"],
        "val_acc_bs": val["val_acc_bs"],
        "val_acc_d": val["val_acc_d"],
        "bn_mean_drift": relative_change(means, bn0[0]),
        "bn_var_drift": relative_change(variances, bn0[1]),
    }


def trace_first_alternation(trainer: BiSSLTrainer) -> list[str]:
    """Composite val top-1 "eval/batch-stats" after each step of a first alternation run step by
    step (``lower_step`` N_L times, then ``upper_step`` N_U times, as ``train_step`` does)."""

    def composite() -> str:
        val = trainer.validate()
        return f"{val['val_acc']:.0f}/{val['val_acc_bs']:.0f}"

    bil = trainer.config.bilevel
    out = [f"start {composite()}"]
    for _ in range(bil.lower_steps):
        trainer.lower_step()
        out.append(f"L {composite()}")
    for _ in range(bil.upper_steps):
        trainer.upper_step()
        out.append(f"U {composite()}")
    return out


def run_one(
    config: BiSSLConfig, pretext_cache: str, do_finetune: bool, trace: bool = False
) -> dict[str, Any]:
    """One BiSSL stage on ``config`` with a row of measurements per alternation."""
    started = time.perf_counter()
    data = BiSSLData.load(config)
    encoder, _ = pretext_encoder(config, None, pretext_cache, pretext=data.pretext)
    out: dict[str, Any] = {}
    if trace:  # on a trainer of its own, so that the run below is the ordinary one
        tracer = BiSSLTrainer.start(config, data, encoder, progress=False)
        out["trace"] = trace_first_alternation(tracer)
    trainer = BiSSLTrainer.start(config, data, encoder, progress=False)
    bn0 = bn_running_stats(trainer.encoder_p.backbone)
    rows = [{"alternation": 0, **measure(trainer, bn0)}]
    for step in range(config.bilevel.alternations):
        before_d, before_p = snapshot(trainer.model_d), snapshot(trainer.encoder_p.backbone)
        logs = trainer.train_step(step)
        trainer.step = step + 1
        lower_total = logs["pretext_loss"] + logs["prox"]
        row: dict[str, Any] = {"alternation": step + 1, **measure(trainer, bn0), **logs}
        row["prox_share"] = logs["prox"] / lower_total if lower_total else float("nan")
        row["move_d"] = group_moves(trainer.model_d, before_d)
        row["move_p"] = group_moves(trainer.encoder_p.backbone, before_p)
        rows.append(row)
    out.update(rows=rows, bissl_s=time.perf_counter() - started)
    if do_finetune:
        metrics = finetune(
            trainer.encoder_p.backbone, config, data.train, data.val, test_set=data.test
        )
        out["test_top1"] = metrics["test_top1"]
        out["ft_val_acc"] = metrics["val_acc"]
    return out


# -- printing -----------------------------------------------------------------------------------

COLUMNS = (
    ("alt", "alternation", "{:>3.0f}"),
    ("comp", "val_acc", "{:5.1f}"),
    ("comp_bs", "val_acc_bs", "{:7.1f}"),
    ("mD", "val_acc_d", "{:5.1f}"),
    ("bnμΔ", "bn_mean_drift", "{:5.2f}"),
    ("bnσΔ", "bn_var_drift", "{:5.2f}"),
    ("ntx", "pretext_loss", "{:5.2f}"),
    ("prox%", "prox_share", "{:6.2%}"),
    ("up", "upper_loss", "{:5.2f}"),
    ("cls", "classic_loss", "{:5.2f}"),
    ("|g|", "upper_grad_norm", "{:5.1f}"),
    ("clip%", "upper_clipped", "{:5.0%}"),
    ("cgres", "cg_true_rel_residual", "{:7.1e}"),
    ("it", "cg_iters", "{:3.0f}"),
    ("cos", "cg_cos", "{:5.3f}"),
)
GROUPS = ("conv", "bn_weight", "bn_bias", "head")
SHORT = {"conv": "conv", "bn_weight": "bnw", "bn_bias": "bnb", "head": "head"}


def _fmt(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = len(fmt.format(0.0))
        return "-".rjust(width)
    return fmt.format(value)


def print_rows(name: str, seed: int, rows: list[dict[str, Any]]) -> None:
    print(
        f"\n== {name}, seed {seed}: per alternation (validation top-1 %; D:/P: relative move "
        "||Δθ_g||/||θ_g|| of θ_D (with head) and θ_P over the alternation)"
    )
    head = [c for c, _, _ in COLUMNS]
    head += [f"D:{SHORT[g]}" for g in GROUPS] + [f"P:{SHORT[g]}" for g in GROUPS[:-1]]
    print(" ".join(f"{h:>7}" for h in head))
    for r in rows:
        cells = [_fmt(f, r.get(k)) for _, k, f in COLUMNS]
        cells += [_fmt("{:7.3f}", r.get("move_d", {}).get(g)) for g in GROUPS]
        cells += [_fmt("{:7.3f}", r.get("move_p", {}).get(g)) for g in GROUPS[:-1]]
        print(" ".join(f"{c:>7}" for c in cells))


def _mean_seeds(values: list[float]) -> str:
    good = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(good) if good else float("nan")
    return f"{mean:5.1f} [" + " ".join(f"{v:.1f}" for v in values) + "]"


def summary(results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    lines = [
        "variant | composite val: start / best / final | model_D final | fine-tuned test top-1"
        " | mean cos(x,v) | clipped"
    ]
    for name, per_seed in results.items():
        runs = list(per_seed.values())
        start = [r["rows"][0]["val_acc"] for r in runs]
        best = [max(row["val_acc"] for row in r["rows"][1:]) for r in runs]
        final = [r["rows"][-1]["val_acc"] for r in runs]
        final_d = [r["rows"][-1]["val_acc_d"] for r in runs]
        test = [r.get("test_top1", float("nan")) for r in runs]
        cos = statistics.fmean(row["cg_cos"] for r in runs for row in r["rows"][1:])
        clip = statistics.fmean(row["upper_clipped"] for r in runs for row in r["rows"][1:])
        lines.append(
            f"{name} | {_mean_seeds(start)} / {_mean_seeds(best)} / {_mean_seeds(final)} | "
            f"{_mean_seeds(final_d)} | {_mean_seeds(test)} | {cos:.3f} | {clip:.0%}"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    method = get_method("bissl")
    chosen = variants(args.ablations)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    started = time.perf_counter()
    for name, extra in chosen.items():
        results[name] = {}
        for seed in args.seeds:
            overrides = [
                *PROFILE,
                *args.overrides,
                *extra,
                f"seed={seed}",
                "cg.check_residual=true",
            ]
            if args.alternations is not None:
                overrides.append(f"bilevel.alternations={args.alternations}")
            config = method.load_config("cpu", overrides)
            results[name][seed] = run_one(config, args.pretext_cache, args.finetune, args.trace)
            r = results[name][seed]
            if "trace" in r:
                print(f"{name}, seed {seed}, first alternation step by step: "
                      + " ".join(r["trace"]))  # fmt: skip
            print(
                f"{name}, seed {seed}: composite val {r['rows'][0]['val_acc']:.1f} -> "
                f"{r['rows'][-1]['val_acc']:.1f}, model_D {r['rows'][-1]['val_acc_d']:.1f}"
                + (f", fine-tuned test {r['test_top1']:.1f}" if "test_top1" in r else "")
                + f" ({r['bissl_s']:.0f} s)",
                flush=True,
            )
    first = next(iter(results))
    print_rows(first, args.seeds[0], results[first][args.seeds[0]]["rows"])
    lines = summary(results)
    print(f"\n== summary (mean [per seed], seeds {args.seeds}; base overrides: {args.overrides})")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "seeds": args.seeds,
        "base_overrides": args.overrides,
        "variants": chosen,
        "results": {name: {str(s): r for s, r in rs.items()} for name, rs in results.items()},
        "summary": lines,
        "wall_s": time.perf_counter() - started,
    }
    path = out / f"{args.tag}.json"
    path.write_text(json.dumps(record, indent=1, default=float))
    print(f"\nwrote {path} ({record['wall_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
