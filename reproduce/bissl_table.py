"""BiSSL against its baseline on downstream classification, mean ± std over seeds.

    python reproduce/bissl_table.py                       # CPU profile: offline data, minutes
    python reproduce/bissl_table.py --profile paper --data-root pretext=~/data/imagenet \\
        --data-root flowers102=~/data/flowers102 --datasets flowers102

Rows: the baseline (SimCLR pre-training -> fine-tune) and BiSSL (SimCLR pre-training -> head
warm-up -> BiSSL -> fine-tune), both fine-tuned the same way (``bissl.pipeline``); a last row is
the difference. Columns: per downstream dataset, test top-1 and top-5 (11-point mAP for
multi-label sets), in %, ``mean ± std`` (sample std) over the profile's seeds. Every finished
(method, dataset, seed) is cached as a cell under ``results/bissl_table/<profile>/cells`` and the
SimCLR encoders under ``.../pretext``, so a rerun (or a killed run) skips what is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bmssl.config import config_from_dict
from bmssl.errors import UserError, cli_entry
from reproduce.tables import (
    CellCache,
    Table,
    parse_key_values,
    prepare_run_dir,
    settings_fingerprint,
)

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
METHODS = {"baseline": "Baseline (SimCLR → fine-tune)", "bissl": "BiSSL"}
METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "map11": "mAP(11pt)"}


@dataclass
class Profile:
    """A table's recipe: seeds, methods, shared BiSSLConfig fields and per-dataset overrides."""

    name: str
    seeds: list[int]
    methods: list[str]
    metrics: list[str]
    threads: int
    config: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_profile(name_or_path: str) -> Profile:
    """``cpu``/``paper`` (``configs/bissl_<name>.yaml``) or a path to such a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / f"bissl_{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("bissl_") for p in CONFIGS.glob("bissl_*.yaml"))
        raise UserError(
            f"unknown profile {name_or_path!r}; choose one of {', '.join(known)} or pass a YAML path"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"profile {str(path)!r} is not valid YAML: {err}") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("datasets"), dict)
        or not raw["datasets"]
    ):
        raise UserError(f"profile {str(path)!r} must map 'datasets' to per-dataset options")
    profile = Profile(
        name=str(raw.get("profile", path.stem.removeprefix("bissl_"))),
        seeds=[int(s) for s in raw.get("seeds", [0, 1, 2])],
        methods=list(raw.get("methods", list(METHODS))),
        metrics=list(raw.get("metrics", ["top1", "top5"])),
        threads=int(raw.get("threads", 0)),
        config=dict(raw.get("config", {}) or {}),
        datasets={k: dict(v or {}) for k, v in raw["datasets"].items()},
    )
    for m in profile.metrics:
        if m not in ("top1", "top5"):
            raise UserError(f"profile metric {m!r} is not one of top1, top5")
    return profile


def cell_config(profile: Profile, dataset: str, seed: int, roots: dict[str, str]) -> Any:
    """BiSSLConfig of one cell: defaults < profile config < dataset overrides < seed, roots."""
    from bissl.trainer import BiSSLConfig

    values = {**profile.config, **profile.datasets[dataset]}
    values.update(dataset=dataset, seed=seed)
    if dataset in roots:
        values["data_root"] = roots[dataset]
    if "pretext" in roots:
        values["pretext_root"] = roots["pretext"]
    return config_from_dict(BiSSLConfig, values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reproduce/bissl_table.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu", help="cpu (default), paper, or a profile YAML")
    parser.add_argument("--datasets", help="comma-separated subset of the profile's datasets")
    parser.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", help="comma-separated integer seeds (default: the profile's)")
    parser.add_argument(
        "--data-root", action="append", default=[], metavar="NAME=PATH",
        help="local root of a downstream dataset, or pretext=PATH for the pretext set",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="BiSSLConfig override for every cell (e.g. --set lam=0.01)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="results/bissl_table", help="output folder")
    parser.add_argument("--fresh", action="store_true", help="ignore cached cells")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[Profile, list[str], list[str], dict[str, str]]:
    """Validate every name, number and data root before anything is trained or written."""
    from bissl.data import load_downstream

    profile = load_profile(args.profile)
    methods = args.methods.split(",") if args.methods else profile.methods
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    for d in datasets:
        if d not in profile.datasets:
            raise UserError(
                f"dataset {d!r} is not in the {profile.name} profile; choose from "
                f"{', '.join(profile.datasets)}"
            )
    if args.seeds:
        try:
            profile.seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r} must be comma-separated integers") from None
    if not profile.seeds:
        raise UserError("no seeds: pass --seeds 0,1,2")
    if args.threads is not None:
        if args.threads < 0:
            raise UserError(f"--threads must be >= 0, got {args.threads}")
        profile.threads = args.threads
    profile.config.update(parse_key_values(args.set, "--set"))
    roots = parse_key_values(args.data_root, "--data-root")
    for d in datasets:
        config = cell_config(profile, d, profile.seeds[0], roots)  # bad options raise here
        load_downstream(d, config.data_root, "train", config.image_size, config.dataset_options)
        from bissl.trainer import simclr_config
        from bmssl.baselines import load_split

        load_split(simclr_config(config), "train")  # the pretext set's root, checked once
    return profile, methods, datasets, roots


def summarise(values: list[float]) -> dict[str, float]:
    """Mean and sample std (0 for one seed) of finite values."""
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def metric_keys(profile: Profile, multilabel: bool) -> list[str]:
    """Reported test metrics of a dataset: the profile's, with top-1 replaced by mAP if multi-label."""
    return [("map11" if (m == "top1" and multilabel) else m) for m in profile.metrics]


@cli_entry
def main(argv: list[str] | None = None) -> Table:
    args = parse_args(argv)
    started = time.perf_counter()
    profile, methods, datasets, roots = plan(args)
    import torch

    from bissl.data import is_multilabel, load_downstream
    from bissl.pipeline import run_method

    if profile.threads > 0:
        torch.set_num_threads(profile.threads)
    out = Path(args.out) / profile.name
    cache = CellCache(out)
    progress = not args.quiet
    multilabel = {}
    for d in datasets:
        cfg = cell_config(profile, d, profile.seeds[0], roots)
        multilabel[d] = is_multilabel(
            load_downstream(d, cfg.data_root, "test", cfg.image_size, cfg.dataset_options)
        )
    columns = [
        f"{d} {METRIC_NAMES[k]}" for d in datasets for k in metric_keys(profile, multilabel[d])
    ]
    seeds = ", ".join(map(str, profile.seeds))
    table = Table(
        f"BiSSL vs baseline ({profile.name} profile): test %, mean ± std over seeds {seeds}",
        columns,
    )

    from tqdm.auto import tqdm

    jobs = [(d, s, m) for d in datasets for s in profile.seeds for m in methods]
    settings_of: dict[tuple[str, str, int], str] = {}
    bar = tqdm(jobs, desc="bissl_table", disable=not progress, dynamic_ncols=True)
    for dataset, seed, method in bar:
        bar.set_postfix_str(f"{method} on {dataset}, seed {seed}")
        column = f"{dataset}__seed{seed}"
        config = cell_config(profile, dataset, seed, roots)
        settings = settings_fingerprint(config)
        settings_of[method, dataset, seed] = settings
        if not args.fresh and cache.get(method, column, settings) is not None:
            continue
        run_dir = out / "runs" / dataset / method / f"seed{seed}"
        prepare_run_dir(run_dir, settings, args.fresh)
        metrics = run_method(method, config, run_dir, progress, pretext_cache=out / "pretext")
        cache.put(
            method,
            column,
            {
                "method": method, "dataset": dataset, "seed": seed, "metrics": metrics,
                "config": dataclasses.asdict(config),
            },
            settings,
        )  # fmt: skip
    bar.close()

    per_seed: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        label = METHODS[method]
        for dataset in datasets:
            for key in metric_keys(profile, multilabel[dataset]):
                col = f"{dataset} {METRIC_NAMES[key]}"
                vals = []
                for seed in profile.seeds:
                    cell = cache.get(
                        method, f"{dataset}__seed{seed}", settings_of[method, dataset, seed]
                    )
                    assert cell is not None
                    vals.append(float(cell["metrics"].get(f"test_{key}", float("nan"))))
                per_seed.setdefault(method, {})[col] = vals
                s = summarise(vals)
                table.set(
                    label, col, f"{s['mean']:.2f} ± {s['std']:.2f}", raw={**s, "per_seed": vals}
                )
        table.notes[label] = "this harness"
    if {"baseline", "bissl"} <= set(methods):
        label = "Δ BiSSL − baseline"
        for col in columns:
            diffs = [b - a for a, b in zip(per_seed["baseline"][col], per_seed["bissl"][col])]
            s = summarise(diffs)
            table.set(label, col, f"{s['mean']:+.2f} ± {s['std']:.2f}")
            table.raw.setdefault(label, {})[col] = {
                "diff_mean": s["mean"],
                "diff_std": s["std"],
                "per_seed": diffs,
            }
        table.notes[label] = "paired by seed"

    elapsed = time.perf_counter() - started
    table.write(
        out, "bissl_table",
        meta={"profile": profile.name, "seeds": profile.seeds, "wall_time_s": elapsed,
              "config": profile.config, "datasets": {d: profile.datasets[d] for d in datasets}},
    )  # fmt: skip
    print(table.markdown())
    print(f"wrote {out / 'bissl_table.md'}, .csv, .json in {elapsed:.0f} s", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
