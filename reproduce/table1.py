"""Rebuild Table 1 (unsupervised few-shot classification) with one command.

    python reproduce/table1.py                    # CPU profile: offline data, 3 seeds, minutes
    python reproduce/table1.py --seeds 1 episodes=500
    python reproduce/table1.py --config paper --data-root omniglot=~/data/omniglot \\
        --data-root miniimagenet=~/data/miniimagenet
    python reproduce/table1.py --config paper --data-dir ~/data --download \\
        --data-root miniimagenet=~/data/mini-imagenet      # fetches omniglot into ~/data/omniglot
    python reproduce/table1.py --profile paper-smoke   # the paper profile's code, tiny synthetic data

Rows are registered methods (``python -m bmssl methods``); columns are ``<dataset> <N>w<K>s``
cells. Every method is retrained once per seed; within a seed all methods are evaluated on the
same episodes of held-out classes. A cell shows the mean over seeds ± the 95% t-interval across
seeds; ▲/▼ mark a cell whose paired difference to the reference row (``--reference``, default
SimCLR) has a 95% hierarchical-bootstrap interval excluding zero; bold marks a row that beats
every other row so. Results go to ``results/table1/<profile>/``: ``table1.{md,csv,json,tex}``,
``accuracy_vs_shots.png`` and ``learning_curves.png``; trained models and finished cells are
cached (fingerprinted by their settings), so a rerun or a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from reproduce.profiles import Table1Profile, load_profile, seed_overrides, table_parser
from reproduce.roots import resolve_roots
from reproduce.tables import CellCache, fingerprint, prepare_run_dir, prune_weights

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = table_parser(
        "python reproduce/table1.py",
        __doc__ or "",
        "table1",
        "results/table1",
        "key=value overrides set fields of the profile, e.g. episodes=2000 classifier=logreg; "
        f"options of reproduce.profiles.Table1Profile:\n{options_help(Table1Profile)}",
        "a dataset's local root",
    )
    parser.add_argument("--reference", help="the row other rows are compared with")
    parser.add_argument(
        "--jobs", type=int, help="jobs trained at once in worker processes (default: profile's)"
    )
    return parser


@dataclass
class Table1Plan:
    """Everything a run needs, validated before anything is trained or written."""

    profile: Table1Profile
    methods: list[str]
    datasets: list[str]
    roots: dict[str, str]
    jobs: int
    out: Path


def method_config(profile: Table1Profile, method: str, dataset: str, root: str | None, seed: int):
    """Config of ``method`` on ``dataset``: preset < model < overrides < dataset < fixed."""
    from bmssl.methods import get_method

    spec = get_method(method)
    fields = {f.name for f in dataclasses.fields(spec.config_class())}
    values: dict[str, Any] = {k: v for k, v in profile.model.items() if k in fields}
    values.update(profile.method_overrides.get(method, {}) or {})
    values.update({k: v for k, v in profile.dataset_options(dataset).items() if k in fields})
    values.update(dataset=dataset, data_root=root, seed=seed)
    preset = profile.preset if profile.preset in spec.presets else None
    return spec.load_config(preset, values)


def plan_table1(args: argparse.Namespace) -> Table1Plan:
    """Validate every name, number and data root before anything is trained or written."""
    from bmssl.data import get_dataset
    from bmssl.evaluate import check_episode_shape
    from bmssl.methods import get_method

    overrides = list(args.overrides or []) + seed_overrides(args.seeds)
    if args.reference:
        overrides.append(f"reference={args.reference}")
    profile = load_profile(Table1Profile, "table1", args.config, overrides)
    methods = args.methods.split(",") if args.methods else list(profile.methods)
    for m in methods:
        get_method(m)  # an unknown name is one line listing the registered methods
    if profile.reference not in methods:
        raise UserError(
            f"the reference row {profile.reference!r} is not among the methods run "
            f"({', '.join(methods)}); add it or pass --reference"
        )
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    for d in datasets:
        if d not in profile.datasets:
            raise UserError(
                f"dataset {d!r} is not in the {profile.profile} profile; choose from "
                f"{', '.join(profile.datasets)}"
            )
    jobs = profile.jobs if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    jobs = min(jobs, os.cpu_count() or 1)
    for d in datasets:
        for m in methods:
            method_config(profile, m, d, None, profile.seeds[0])  # bad options raise here
    out = Path(args.out) / profile.profile

    def probe(name: str, root: str) -> None:
        get_dataset(name, root, split="test", image_size=_image_size(profile, name))

    roots = resolve_roots(
        args.data_root, args.data_dir, datasets, download=args.download, probe=probe,
        synthetic=out / "smoke-data" if profile.synthetic_data else None,
        synthetic_options={d: fewshot_needs(profile, methods, d) for d in datasets},
        quiet=args.quiet,
    )  # fmt: skip
    for d in datasets:
        test = get_dataset(d, roots.get(d), split="test", image_size=_image_size(profile, d))
        for n_way, k_shot in profile.cells(d):
            check_episode_shape(test, n_way, k_shot, profile.n_query)
    return Table1Plan(profile, methods, datasets, roots, jobs, out)


def _image_size(profile: Table1Profile, dataset: str) -> int:
    return int(profile.dataset_options(dataset).get("image_size", 28))


def fewshot_needs(
    profile: Table1Profile, methods: list[str], dataset: str
) -> dict[str, tuple[int, int]]:
    """``split -> (classes, images each)`` that the run's episodes need of ``dataset``: the
    table's cells on test, the methods' validation episodes on val, ProtoNet's training
    episodes on train (what a synthetic copy must hold; :mod:`reproduce.smoke_data`)."""
    from bmssl.pretrain import VAL_QUERIES

    cells = profile.cells(dataset)
    needs = {
        "train": (0, 1),
        "val": (0, 1),
        "test": (max(n for n, _ in cells), max(k for _, k in cells) + profile.n_query),
    }
    for m in methods:
        config = method_config(profile, m, dataset, None, profile.seeds[0])
        if getattr(config, "train_protocol", "fewshot") == "fewshot":
            wanted = (config.eval_n_way, config.eval_k_shot + VAL_QUERIES)
            needs["val"] = (max(needs["val"][0], wanted[0]), max(needs["val"][1], wanted[1]))
        if all(hasattr(config, f) for f in ("n_way", "k_shot", "n_query")):  # episodic training
            wanted = (config.n_way, config.k_shot + config.n_query)
            needs["train"] = (max(needs["train"][0], wanted[0]), max(needs["train"][1], wanted[1]))
    return needs


def column_name(dataset: str, n_way: int, k_shot: int) -> str:
    return f"{dataset} {n_way}w{k_shot}s"


@dataclass(frozen=True)
class Job:
    """Train (or reload) one method on one dataset with one seed, then evaluate its cells on
    the seed's episodes. Picklable, so that ``--jobs N`` can run it in a worker process."""

    method: str
    dataset: str
    seed: int
    config: Any
    run_dir: Path
    cells: tuple[tuple[int, int], ...]
    n_query: int
    episodes: int
    classifier: str
    threads: int | None
    progress: bool


def run_job(job: Job) -> dict[str, Any]:
    """``{"cells": [(n_way, k_shot, result)], "budget": {...}, "curve": [...]}`` of a job."""
    import torch

    from bmssl.data import get_dataset
    from bmssl.evaluate import evaluate_fewshot
    from bmssl.methods import get_method
    from bmssl.pretrain import random_init_encoder

    if job.threads:
        torch.set_num_threads(job.threads)
    trainer_cls = get_method(job.method).trainer_class()
    started = time.perf_counter()
    curve: list[list[float]] = []
    if trainer_cls is None:
        backbone = random_init_encoder(job.config).backbone
    else:
        trainer = trainer_cls(job.config, out_dir=job.run_dir, progress=job.progress)
        trainer.fit()
        backbone = trainer.backbone()
        per_step = job.config.views_per_step
        curve = [[h["step"] * per_step, h["val_acc"]] for h in trainer.history if "val_acc" in h]
    budget = {
        "views_seen": int(getattr(job.config, "steps", 0) * job.config.views_per_step)
        if trainer_cls is not None
        else 0,
        "train_s": time.perf_counter() - started,
    }
    test = get_dataset(
        job.dataset, job.config.data_root, split="test", image_size=job.config.image_size
    )
    evaluated, network = test, backbone
    if job.classifier != "finetune":
        # Every cell classifies the same frozen features of the test split: embed it once
        # rather than once per cell (evaluate_fewshot would embed it whole each time).
        evaluated, network = embedded_split(backbone, test), torch.nn.Identity()
    results = []
    for n_way, k_shot in job.cells:
        result = evaluate_fewshot(
            network, evaluated, n_way, k_shot, job.n_query, job.episodes, job.classifier,
            seed=job.seed,
        )  # fmt: skip
        results.append((n_way, k_shot, {**result.as_dict(), "accuracies": result.accuracies}))
    return {"cells": results, "budget": budget, "curve": curve}


def embedded_split(backbone: Any, split: Any) -> Any:
    """``split`` with its images replaced by ``backbone``'s eval-mode features, embedded once
    exactly as :func:`bmssl.evaluate.evaluate_fewshot` embeds a split (same batches), so the
    episodes of every cell score the same features it would compute."""
    import numpy as np
    import torch

    from bmssl.data.base import ImageDataset
    from bmssl.evaluate import embed_dataset

    was_training = backbone.training
    backbone.eval()
    try:
        feats = embed_dataset(backbone, split)
    finally:
        backbone.train(was_training)

    class EmbeddedSplit(ImageDataset):
        def __init__(self) -> None:
            self.targets = list(split.targets)
            self.classes = list(split.classes)
            self.image_shape = (int(feats.shape[1]), 1, 1)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
            return feats[index], self.targets[index]

        def get_batch(self, indices: Any) -> torch.Tensor:
            return feats[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    return EmbeddedSplit()


def _job_cost(job: Job) -> float:
    from bmssl.methods import get_method

    return float(get_method(job.method).cost)


@cli_entry
def main(argv: list[str] | None = None) -> Any:
    args = parse_args(build_parser(), argv)
    started = time.perf_counter()
    the_plan = plan_table1(args)
    profile = the_plan.profile
    from reproduce.pool import run_jobs, spread_devices
    from reproduce.table1_report import assemble

    if profile.threads:
        import torch

        torch.set_num_threads(profile.threads)
    out = the_plan.out
    cache = CellCache(out)
    progress = not args.quiet
    parallel = the_plan.jobs > 1
    jobs: list[Job] = []
    settings: dict[tuple[str, str, int], str] = {}
    from reproduce.tables import settings_fingerprint

    for method in the_plan.methods:
        for dataset in the_plan.datasets:
            for seed in profile.seeds:
                root = the_plan.roots.get(dataset)
                config = method_config(profile, method, dataset, root, seed)
                config.device = spread_devices(config.device, len(jobs))
                run_settings = settings_fingerprint(config)
                settings[method, dataset, seed] = fingerprint(
                    run_settings, profile.episodes, profile.n_query, profile.classifier,
                    profile.cells(dataset),
                )  # fmt: skip
                key = f"{dataset}__seed{seed}"
                if not args.fresh and cache.get(method, key, settings[method, dataset, seed]):
                    continue
                run_dir = out / "runs" / method / dataset / f"seed{seed}"
                prepare_run_dir(run_dir, run_settings, args.fresh)
                jobs.append(
                    Job(
                        method, dataset, seed, config, run_dir, tuple(profile.cells(dataset)),
                        profile.n_query, profile.episodes, profile.classifier, profile.threads,
                        progress=progress and not parallel,
                    )
                )  # fmt: skip

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="table1", disable=not progress, dynamic_ncols=True)

    def store(job: Job, result: dict[str, Any]) -> None:
        cell = {
            "method": job.method, "dataset": job.dataset, "seed": job.seed,
            "config": dataclasses.asdict(job.config), **result,
        }  # fmt: skip
        cache.put(
            job.method,
            f"{job.dataset}__seed{job.seed}",
            cell,
            settings[job.method, job.dataset, job.seed],
        )
        if not profile.keep_checkpoints:
            prune_weights(job.run_dir)
        bar.set_postfix_str(f"{job.method} on {job.dataset}, seed {job.seed}: done")
        bar.update()

    if parallel and jobs:
        bar.set_postfix_str(f"{min(the_plan.jobs, len(jobs))} workers")
    run_jobs(jobs, run_job, the_plan.jobs, store, _job_cost)
    bar.close()

    cells = {
        (m, d, s): cache.get(m, f"{d}__seed{s}", settings[m, d, s])
        for m in the_plan.methods
        for d in the_plan.datasets
        for s in profile.seeds
    }
    elapsed = time.perf_counter() - started
    table = assemble(the_plan, cells, elapsed)
    print(table.markdown())
    print(
        f"wrote {out / 'table1.md'} (.csv, .json, .tex) and figures in {elapsed:.0f} s",
        file=sys.stderr,
    )
    return table


if __name__ == "__main__":
    main()
