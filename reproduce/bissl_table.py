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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.config_help import options_help
from bmssl.errors import UserError
from reproduce.driver import CellRef, Cells, TablePlan, TableSpec, table_main
from reproduce.profiles import (
    BISSL_PATHS,
    BiSSLTableProfile,
    load_profile,
    seed_overrides,
    table_parser,
    worker_count,
)
from reproduce.roots import resolve_roots
from reproduce.tables import CellCache, Table, prepare_run_dir, settings_fingerprint


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
class BiSSLTablePlan(TablePlan):
    profile: BiSSLTableProfile
    methods: list[str]
    datasets: list[str]
    roots: dict[str, str]
    overrides: list[str]
    jobs: int = 1


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
    from bissl.downstream import load_downstream
    from bmssl.pretrain import load_split

    profile = load_profile(BiSSLTableProfile, "bissl", args.config, seed_overrides(args.seeds))
    methods = args.methods.split(",") if args.methods else list(profile.methods)
    for m in methods:
        if m not in BISSL_PATHS:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(BISSL_PATHS)}")
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    for d in datasets:
        if d not in profile.datasets:
            raise UserError(
                f"dataset {d!r} is not in the {profile.profile} profile; choose from "
                f"{', '.join(profile.datasets)}"
            )
    the_plan = BiSSLTablePlan(
        profile, Path(args.out) / profile.profile, methods, datasets, {},
        list(args.overrides or []), worker_count(profile.jobs if args.jobs is None else args.jobs),
    )  # fmt: skip
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


@dataclass(frozen=True)
class BiSSLJob:
    """One path (``baseline`` or ``bissl``) on one downstream set with one seed. Jobs that
    share a pretext encoder form one group: it is trained once, then reused from the cache."""

    method: str
    dataset: str
    seed: int
    config: Any
    run_dir: Path
    pretext_cache: Path
    progress: bool
    threads: int | None
    refs: tuple[CellRef, ...]
    group: str
    cost: float = 1.0


def run_bissl_job(job: BiSSLJob) -> dict[tuple[str, str], dict[str, Any]]:
    """The job's cell: the path's test metrics (and its config)."""
    import torch

    from bissl.pipeline import run_method

    if job.threads:
        torch.set_num_threads(job.threads)
    metrics = run_method(job.method, job.config, job.run_dir, job.progress, job.pretext_cache)
    ref = job.refs[0]
    cell = {
        "method": job.method, "dataset": job.dataset, "seed": job.seed, "metrics": metrics,
        "config": dataclasses.asdict(job.config),
    }  # fmt: skip
    return {(ref.row, ref.column): cell}


def bissl_job(
    plan: BiSSLTablePlan, dataset: str, seed: int, method: str, fresh: bool, progress: bool
) -> BiSSLJob:
    """The job of one cell; its run folder is emptied when it holds a run of other settings."""
    from bissl.budget import baseline_pretext_steps
    from bissl.stages import pretext_key

    config = cell_config(plan, dataset, seed)
    settings = settings_fingerprint(config)
    ref = CellRef(method, f"{dataset}__seed{seed}", settings)
    run_dir = plan.out / "runs" / dataset / method / f"seed{seed}"
    if fresh or CellCache(plan.out).get(ref.row, ref.column, ref.fingerprint) is None:
        prepare_run_dir(run_dir, settings, fresh)
    steps = baseline_pretext_steps(config) if method == "baseline" else config.pretext.steps
    return BiSSLJob(
        method, dataset, seed, config, run_dir, plan.out / "pretext", progress,
        plan.profile.threads, (ref,), group=pretext_key(config, steps),
    )  # fmt: skip


class BiSSLTable(TableSpec):
    name = "bissl_table"
    run = staticmethod(run_bissl_job)

    build_parser = staticmethod(build_parser)
    plan = staticmethod(plan_bissl_table)

    def jobs(self, plan: BiSSLTablePlan, fresh: bool, progress: bool) -> list[BiSSLJob]:
        return [
            bissl_job(plan, d, s, m, fresh, progress)
            for d in plan.datasets
            for s in plan.profile.seeds
            for m in plan.methods
        ]

    def assemble(self, plan: BiSSLTablePlan, cells: Cells, elapsed: float) -> Table:
        from reproduce.bissl_report import assemble

        return assemble(plan, cells, elapsed)


main = table_main(BiSSLTable())


if __name__ == "__main__":
    main()
