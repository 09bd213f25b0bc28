"""Rebuild Table 1 (unsupervised few-shot classification) with one command.

    python reproduce/table1.py                    # CPU profile: offline data, a few minutes
    python reproduce/table1.py --profile paper --data-root omniglot=~/data/omniglot \\
        --data-root miniimagenet=~/data/miniimagenet

Rows are the methods this harness implements; columns are ``<dataset> <N>w<K>s`` cells, each
``mean ± 95% CI`` over evaluation episodes on held-out classes. Trained models and finished
cells are cached under ``results/table1/<profile>/`` so a rerun (or a killed run) picks up where
it stopped. Published numbers of other methods appear only in the paper profile, with a source.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bmssl.config import config_from_dict, load_config
from bmssl.data import get_dataset
from bmssl.errors import UserError, cli_entry
from bmssl.evaluate import CLASSIFIERS, check_episode_shape, evaluate_fewshot
from reproduce.tables import (
    CellCache,
    Table,
    fingerprint,
    format_mean_ci,
    parse_key_values,
    prepare_run_dir,
    settings_fingerprint,
)

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
CELL = re.compile(r"^(\d+)w(\d+)s$")


@dataclass(frozen=True)
class MethodSpec:
    """A table row: its label, how to build its config and trainer, and fixed overrides."""

    label: str
    kind: str  # "untrained" | "simclr" | "protonet" | "bmssl"
    fixed: dict[str, Any] = field(default_factory=dict)
    base_yaml: str | None = None  # per-profile base config, e.g. "bmssl_{profile}.yaml"


METHODS: dict[str, MethodSpec] = {
    "random": MethodSpec("Random init", "untrained"),
    "simclr": MethodSpec("SimCLR", "simclr"),
    "protonet": MethodSpec("ProtoNet (supervised, upper bound)", "protonet"),
    "bmssl": MethodSpec("BMSSL (δ > 0)", "bmssl", base_yaml="bmssl_{profile}.yaml"),
    "meta-ssl": MethodSpec(
        "Meta-SSL, no bootstrap (δ = 0)", "bmssl", {"bootstrap_steps": 0}, "bmssl_{profile}.yaml"
    ),
    "bmssl-fo": MethodSpec(
        "BMSSL first-order", "bmssl", {"first_order": True}, "bmssl_{profile}.yaml"
    ),
}


def trainer_classes(kind: str) -> tuple[type, type]:
    """(config class, trainer class) of a method kind; imported lazily."""
    if kind == "simclr":
        from bmssl.baselines import SimCLRConfig, SimCLRTrainer

        return SimCLRConfig, SimCLRTrainer
    if kind == "protonet":
        from bmssl.baselines import ProtoNetConfig, ProtoNetTrainer

        return ProtoNetConfig, ProtoNetTrainer
    if kind in ("bmssl", "untrained"):
        if kind == "untrained":
            from bmssl.baselines import SimCLRConfig

            return SimCLRConfig, type(None)
        from bmssl.meta import BMSSLConfig, BMSSLTrainer

        return BMSSLConfig, BMSSLTrainer
    raise ValueError(kind)


@dataclass
class Profile:
    name: str
    episodes: int
    n_query: int
    classifier: str
    seed: int
    methods: list[str]
    model: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    method_overrides: dict[str, dict[str, Any]]
    threads: int | None = None
    jobs: int = 1

    def cells(self, dataset: str) -> list[tuple[int, int]]:
        out = []
        for cell in self.datasets[dataset].get("cells", []):
            match = CELL.match(str(cell))
            if not match:
                raise UserError(
                    f"cell {cell!r} of {dataset} is not of the form <N>w<K>s (e.g. 5w1s)"
                )
            out.append((int(match[1]), int(match[2])))
        return out


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / f"table1_{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("table1_") for p in CONFIGS.glob("table1_*.yaml"))
        raise UserError(
            f"unknown profile {name_or_path!r}; choose one of {', '.join(known)} or pass a YAML path"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    return Profile(
        name=str(raw.get("profile", path.stem)),
        episodes=int(raw.get("episodes", 2000)),
        n_query=int(raw.get("n_query", 15)),
        classifier=str(raw.get("classifier", "proto")),
        seed=int(raw.get("seed", 0)),
        methods=list(raw.get("methods", list(METHODS))),
        model=dict(raw.get("model", {})),
        datasets=dict(raw.get("datasets", {})),
        method_overrides=dict(raw.get("method_overrides", {}) or {}),
        threads=int(raw["threads"]) if raw.get("threads") else None,
        jobs=int(raw.get("jobs", 1)),
    )


def method_config(profile: Profile, method: str, dataset: str, data_root: str | None) -> Any:
    """Config of ``method`` trained on ``dataset``: defaults < base YAML < profile < fixed."""
    spec = METHODS[method]
    config_cls, _ = trainer_classes(spec.kind)
    base: Any = None
    if spec.base_yaml:
        candidate = CONFIGS / spec.base_yaml.format(profile=profile.name)
        if candidate.is_file():
            base = load_config(config_cls, candidate)
    known = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {k: v for k, v in profile.model.items() if k in known}
    values.update(profile.method_overrides.get(method, {}) or {})
    ds = {k: v for k, v in profile.datasets[dataset].items() if k != "cells" and k in known}
    values.update(ds)
    values.update(dataset=dataset, data_root=data_root, seed=profile.seed)
    values.update(spec.fixed)
    return config_from_dict(config_cls, values, base=base)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", default="cpu", help="cpu (default), paper, or a path to a profile YAML"
    )
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated subset of: {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--datasets", default=None, help="comma-separated subset of the profile's datasets"
    )
    parser.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="local root of a dataset",
    )
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per cell")
    parser.add_argument("--classifier", default=None, choices=CLASSIFIERS)
    parser.add_argument(
        "--out", default="results/table1", help="output folder (default results/table1)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="ignore cached cells and trained models"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="train this many (method, dataset) pairs at once in worker processes "
        "(default: the profile's jobs, at most the CPU count; 1 = in this process)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[Profile, list[str], list[str], dict[str, str]]:
    """Validate every name and number before anything is trained or written."""
    profile = load_profile(args.profile)
    if args.episodes is not None:
        if args.episodes < 1:
            raise UserError(f"--episodes must be at least 1, got {args.episodes}")
        profile.episodes = args.episodes
    if args.classifier:
        profile.classifier = args.classifier
    if args.jobs is None:
        args.jobs = max(1, min(profile.jobs, os.cpu_count() or 1))
    elif args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    methods = args.methods.split(",") if args.methods else profile.methods
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    for d in datasets:
        if d not in profile.datasets:
            raise UserError(
                f"dataset {d!r} is not in the {profile.name} profile; choose from {', '.join(profile.datasets)}"
            )
    roots = parse_key_values(args.data_root, "--data-root")
    for d in datasets:
        test = get_dataset(
            d, roots.get(d), split="test", image_size=profile.datasets[d].get("image_size", 28)
        )
        for n_way, k_shot in profile.cells(d):
            check_episode_shape(test, n_way, k_shot, profile.n_query)
        for m in methods:
            method_config(profile, m, d, roots.get(d))  # raises on a bad option before any training
    return profile, methods, datasets, roots


def train_or_load(method: str, config: Any, run_dir: Path, progress: bool) -> Any:
    """The trained backbone of ``method`` (resuming or reusing ``run_dir``'s checkpoint)."""
    spec = METHODS[method]
    if spec.kind == "untrained":
        from bmssl.baselines import random_init_encoder

        return random_init_encoder(config).backbone
    _, trainer_cls = trainer_classes(spec.kind)
    trainer = trainer_cls(config, out_dir=run_dir, progress=progress)
    trainer.fit()
    return trainer.encoder.backbone


@dataclass(frozen=True)
class Job:
    """Train (or reload) one method on one dataset, then evaluate its unfinished cells.

    Picklable, so that ``--jobs N`` can run it in a worker process.
    """

    method: str
    dataset: str
    config: Any
    run_dir: Path
    cells: tuple[tuple[int, int], ...]
    n_query: int
    episodes: int
    classifier: str
    seed: int
    threads: int | None
    progress: bool

    @property
    def cost(self) -> int:
        """Rough training cost rank, so that a pool starts the long jobs first."""
        return {"bmssl": 3, "simclr": 2, "protonet": 1}.get(METHODS[self.method].kind, 0)


def run_job(job: Job) -> list[tuple[int, int, dict[str, Any]]]:
    """``[(n_way, k_shot, result)]`` of the job's cells; the same in a worker as in-process."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    backbone = train_or_load(job.method, job.config, job.run_dir, job.progress)
    test = get_dataset(
        job.dataset, job.config.data_root, split="test", image_size=job.config.image_size
    )
    results = []
    for n_way, k_shot in job.cells:
        result = evaluate_fewshot(
            backbone,
            test,
            n_way,
            k_shot,
            job.n_query,
            job.episodes,
            job.classifier,
            seed=job.seed,
        )
        results.append((n_way, k_shot, result.as_dict()))
    return results


def _ignore_interrupts() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle; it terminates the workers, which is
    safe because every checkpoint and cell is written atomically."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_numbered(item: tuple[int, Job]) -> tuple[int, list[tuple[int, int, dict[str, Any]]]]:
    return item[0], run_job(item[1])


def run_jobs(jobs: list[Job], workers: int, on_done: Callable[[Job, list], None]) -> None:
    """Run ``jobs`` in this process (``workers`` = 1) or in a pool of spawned processes; each
    job's results go to ``on_done`` as soon as it finishes, so a killed run loses no cell."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, run_job(job))
        return
    import multiprocessing

    ordered = sorted(jobs, key=lambda j: -j.cost)  # long jobs first: less idle time at the end
    # spawn, not fork: forking a process whose torch thread pools are live can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(min(workers, len(jobs)), initializer=_ignore_interrupts)
    try:
        for index, results in pool.imap_unordered(_run_numbered, list(enumerate(ordered))):
            on_done(ordered[index], results)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def references(profile: Profile, datasets: list[str]) -> list[dict[str, Any]]:
    """Published rows whose cells are in this table (paper-style profiles only)."""
    path = HERE / "references" / "table1.yaml"
    rows = yaml.safe_load(path.read_text()) or []
    columns = {column_name(d, n, k) for d in datasets for n, k in profile.cells(d)}
    return [r for r in rows if set(r["cells"]) & columns]


def column_name(dataset: str, n_way: int, k_shot: int) -> str:
    return f"{dataset} {n_way}w{k_shot}s"


@cli_entry
def main(argv: list[str] | None = None) -> Table:
    args = parse_args(argv)
    started = time.perf_counter()
    profile, methods, datasets, roots = plan(args)
    if profile.threads:
        import torch

        torch.set_num_threads(profile.threads)
    out = Path(args.out) / profile.name
    cache = CellCache(out)
    progress = not args.quiet
    columns = [column_name(d, n, k) for d in datasets for n, k in profile.cells(d)]
    table = Table(
        f"Table 1 ({profile.name} profile): {profile.classifier} classifier, accuracy % ± 95% CI, {profile.episodes} episodes",
        columns,
    )

    from tqdm.auto import tqdm

    parallel = args.jobs > 1
    jobs: list[Job] = []
    settings: dict[tuple[str, str], str] = {}
    for method in methods:
        for dataset in datasets:
            config = method_config(profile, method, dataset, roots.get(dataset))
            run_settings = settings_fingerprint(config)
            columns_of = {(n, k): column_name(dataset, n, k) for n, k in profile.cells(dataset)}
            for (n, k), col in columns_of.items():
                settings[method, col] = fingerprint(
                    run_settings, profile.episodes, profile.n_query, profile.classifier,
                    profile.seed, n, k,
                )  # fmt: skip
            todo = tuple(
                cell
                for cell, col in columns_of.items()
                if args.fresh or cache.get(method, col, settings[method, col]) is None
            )
            if not todo:
                continue
            run_dir = out / "runs" / method / dataset
            if METHODS[method].kind != "untrained":
                prepare_run_dir(run_dir, run_settings, args.fresh)
            jobs.append(
                Job(
                    method, dataset, config, run_dir, todo, profile.n_query, profile.episodes,
                    profile.classifier, profile.seed, profile.threads,
                    progress=progress and not parallel,
                )
            )  # fmt: skip

    bar = tqdm(total=len(jobs), desc="table1", disable=not progress, dynamic_ncols=True)

    def store(job: Job, results: list[tuple[int, int, dict[str, Any]]]) -> None:
        for n_way, k_shot, result in results:
            col = column_name(job.dataset, n_way, k_shot)
            cell = {**result, "method": job.method, "dataset": job.dataset}
            cache.put(job.method, col, cell, settings[job.method, col])
        bar.set_postfix_str(f"{job.method} on {job.dataset} done")
        bar.update()

    if parallel and jobs:
        bar.set_postfix_str(f"{min(args.jobs, len(jobs))} workers")
    run_jobs(jobs, args.jobs, store)
    bar.close()

    for method in methods:
        label = METHODS[method].label
        for dataset in datasets:
            for n_way, k_shot in profile.cells(dataset):
                col = column_name(dataset, n_way, k_shot)
                cell = cache.get(method, col, settings[method, col])
                assert cell is not None
                table.set(label, col, format_mean_ci(cell["mean"], cell["ci95"]), raw=cell)
        table.notes.setdefault(label, "this harness")
    for ref in references(profile, datasets) if profile.name != "cpu" else []:
        for col, value in ref["cells"].items():
            if col in columns:
                table.set(ref["method"], col, f"{value:.2f}")
        table.notes[ref["method"]] = ref["source"]

    elapsed = time.perf_counter() - started
    table.write(
        out,
        "table1",
        meta={"profile": profile.name, "episodes": profile.episodes, "wall_time_s": elapsed},
    )
    print(table.markdown())
    print(f"wrote {out / 'table1.md'}, .csv, .json in {elapsed:.0f} s", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
