"""BiSSL against its baseline on downstream classification, over seeds, with the paired difference.

    python reproduce/bissl_table.py                       # CPU profile: offline data, minutes
    python reproduce/bissl_table.py --seeds 5 bilevel.lam=0.01
    python reproduce/bissl_table.py --config paper --data-root pretext=~/data/imagenet \\
        --data-root flowers102=~/data/flowers102 --datasets flowers102
    python reproduce/bissl_table.py --config paper --data-dir ~/data --download \\
        --data-root pretext=~/data/imagenet/train --datasets flowers102,dtd
    python reproduce/bissl_table.py --profile paper-smoke   # every paper path, synthetic data

Rows: the baseline (SimCLR pre-training -> fine-tune) and BiSSL (SimCLR pre-training -> head
warm-up -> BiSSL -> fine-tune), both fine-tuned the same way (``bissl.pipeline``), and the
paired difference BiSSL − baseline (same seeds) with its 95% t-interval across seeds. Columns:
per downstream dataset, test top-1 and top-5 (11-point mAP for multi-label sets), in %,
``mean ± 95% t-interval`` over the profile's seeds. Every finished (method, dataset, seed) is
cached as a cell under ``results/bissl_table/<profile>/cells`` and the SimCLR encoders under
``.../pretext``, so a rerun (or a killed run) skips what is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmssl.cli import parse_args
from bmssl.config import options_help
from bmssl.errors import UserError, cli_entry
from reproduce.profiles import BiSSLTableProfile, load_profile, seed_overrides, table_parser
from reproduce.roots import resolve_roots
from reproduce.tables import (
    CellCache,
    Table,
    format_mean_ci,
    prepare_run_dir,
    prune_weights,
    settings_fingerprint,
)

LABELS = {"baseline": "Baseline (SimCLR → fine-tune)", "bissl": "BiSSL"}
DIFF_LABEL = "Δ BiSSL − baseline (paired)"
METRIC_NAMES = {"top1": "top-1", "top5": "top-5", "map11": "mAP(11pt)"}


def build_parser() -> argparse.ArgumentParser:
    return table_parser(
        "python reproduce/bissl_table.py",
        __doc__ or "",
        "bissl",
        "results/bissl_table",
        "key=value overrides set BiSSL options of every cell (dotted, e.g. bilevel.lam=0.01 "
        "finetune.steps=200; python -m bissl run --help lists them); profile fields are set with "
        f"--config FILE:\n{options_help(BiSSLTableProfile)}",
        "local root of a downstream dataset, or pretext=PATH for the pretext set",
    )


@dataclass
class BiSSLTablePlan:
    profile: BiSSLTableProfile
    methods: list[str]
    datasets: list[str]
    roots: dict[str, str]
    overrides: list[str]
    out: Path


def cell_config(plan: BiSSLTablePlan, dataset: str, seed: int) -> Any:
    """BiSSLConfig of one cell: preset < profile config < dataset options < overrides < seed."""
    from bmssl.config import config_from_dict
    from bmssl.methods import get_method

    method = get_method("bissl")
    base = method.load_config(plan.profile.preset if plan.profile.preset else None)
    values: dict[str, Any] = {}
    for source in (plan.profile.config, plan.profile.datasets.get(dataset) or {}):
        values.update(source)
    values.update(dataset=dataset, seed=seed)
    if dataset in plan.roots:
        values["data_root"] = plan.roots[dataset]
    config = config_from_dict(type(base), values, base=base)
    config = method.load_config(None, plan.overrides, base=config)
    if "pretext" in plan.roots:
        config.pretext = pretext_at(config.pretext, plan.roots["pretext"])
    return config


def pretext_at(pretext: Any, root: str) -> Any:
    """The pretext section reading its set from ``root`` (``--data-root pretext=PATH``): a
    ``prefix:<path>`` set (``imagefolder:``, ``hf:``) names its folder in the dataset name, which
    the loader reads instead of ``data_root``, so the path is put there."""
    dataset = pretext.dataset
    if ":" in dataset:
        dataset = f"{dataset.split(':', 1)[0]}:{root}"
    return dataclasses.replace(pretext, dataset=dataset, data_root=root)


def plan_bissl_table(args: argparse.Namespace) -> BiSSLTablePlan:
    """Validate every name, number and data root before anything is trained or written."""
    from bissl.batches import load_downstream
    from bmssl.pretrain import load_split

    profile = load_profile(BiSSLTableProfile, "bissl", args.config, seed_overrides(args.seeds))
    methods = args.methods.split(",") if args.methods else list(profile.methods)
    for m in methods:
        if m not in LABELS:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(LABELS)}")
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    for d in datasets:
        if d not in profile.datasets:
            raise UserError(
                f"dataset {d!r} is not in the {profile.profile} profile; choose from "
                f"{', '.join(profile.datasets)}"
            )
    the_plan = BiSSLTablePlan(
        profile, methods, datasets, {}, list(args.overrides or []), Path(args.out)
    )
    the_plan.out = the_plan.out / profile.profile
    configs = {d: cell_config(the_plan, d, profile.seeds[0]) for d in datasets}  # bad options

    def probe(name: str, root: str) -> None:
        config = configs[name]
        load_downstream(name, root, "test", config.image_size, config.dataset_options)

    synthetic = the_plan.out / "smoke-data" if profile.synthetic_data else None
    wanted = [*datasets, "pretext"] if synthetic is not None else datasets
    the_plan.roots = resolve_roots(
        args.data_root, args.data_dir, wanted, download=args.download, probe=probe,
        synthetic=synthetic, quiet=args.quiet,
    )  # fmt: skip
    for d in datasets:
        config = cell_config(the_plan, d, profile.seeds[0])
        load_downstream(d, config.data_root, "train", config.image_size, config.dataset_options)
        load_split(config.pretext_run(), "train")  # the pretext set's root, checked once
    return the_plan


def metric_keys(profile: BiSSLTableProfile, multilabel: bool) -> list[str]:
    """Reported test metrics: the profile's, with top-1 replaced by mAP for multi-label sets."""
    return [("map11" if (m == "top1" and multilabel) else m) for m in profile.metrics]


@cli_entry
def main(argv: list[str] | None = None) -> Table:
    args = parse_args(build_parser(), argv)
    started = time.perf_counter()
    the_plan = plan_bissl_table(args)
    profile = the_plan.profile
    import torch

    from bissl.batches import load_downstream
    from bissl.pipeline import run_method
    from reproduce.stats import t_interval

    if profile.threads:
        torch.set_num_threads(profile.threads)
    out = the_plan.out
    cache = CellCache(out)
    progress = not args.quiet
    multilabel = {}
    for d in the_plan.datasets:
        cfg = cell_config(the_plan, d, profile.seeds[0])
        test = load_downstream(d, cfg.data_root, "test", cfg.image_size, cfg.dataset_options)
        multilabel[d] = test.multilabel
    columns = [
        f"{d} {METRIC_NAMES[k]}"
        for d in the_plan.datasets
        for k in metric_keys(profile, multilabel[d])
    ]
    seeds = ", ".join(map(str, profile.seeds))
    table = Table(
        f"BiSSL vs baseline ({profile.profile} profile): test %, mean ± 95% t-interval over "
        f"seeds {seeds}",
        columns,
    )

    from tqdm.auto import tqdm

    jobs = [(d, s, m) for d in the_plan.datasets for s in profile.seeds for m in the_plan.methods]
    settings_of: dict[tuple[str, str, int], str] = {}
    bar = tqdm(jobs, desc="bissl_table", disable=not progress, dynamic_ncols=True)
    for dataset, seed, method in bar:
        bar.set_postfix_str(f"{method} on {dataset}, seed {seed}")
        column = f"{dataset}__seed{seed}"
        config = cell_config(the_plan, dataset, seed)
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
        if not profile.keep_checkpoints:
            prune_weights(run_dir)
    bar.close()

    per_seed: dict[str, dict[str, list[float]]] = {}
    for method in the_plan.methods:
        label = LABELS[method]
        for dataset in the_plan.datasets:
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
                mean, half = t_interval(vals)
                raw = {"mean": mean, "half_width": half, "per_seed": vals}
                table.set(label, col, format_mean_ci(mean, half), raw=raw)
        table.notes[label] = "this harness"
    if {"baseline", "bissl"} <= set(the_plan.methods):
        for col in columns:
            diffs = [b - a for a, b in zip(per_seed["baseline"][col], per_seed["bissl"][col])]
            mean, half = t_interval(diffs)
            text = format_mean_ci(mean, half)
            table.set(DIFF_LABEL, col, text if text.startswith("-") else f"+{text}")
            table.raw.setdefault(DIFF_LABEL, {})[col] = {
                "mean": mean,
                "half_width": half,
                "per_seed": diffs,
                "excludes_zero": bool(abs(mean) > half),
            }
        table.notes[DIFF_LABEL] = "paired by seed, 95% t-interval"

    elapsed = time.perf_counter() - started
    table.write(
        out, "bissl_table",
        meta={"profile": profile.profile, "seeds": profile.seeds, "wall_time_s": elapsed,
              "config": profile.config, "overrides": the_plan.overrides,
              "datasets": {d: profile.datasets[d] for d in the_plan.datasets}},
    )  # fmt: skip
    print(table.markdown())
    print(f"wrote {out / 'bissl_table.md'}, .csv, .json, .tex in {elapsed:.0f} s", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
