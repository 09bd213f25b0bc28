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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.config_help import options_help
from bmssl.errors import UserError
from reproduce.driver import CellRef, Cells, TablePlan, TableSpec, table_main
from reproduce.fewshot_jobs import (
    Evaluation,
    FewShotJob,
    check_row_method,
    embedded_split,
    run_fewshot_job,
)
from reproduce.profiles import (
    Table1Profile,
    load_profile,
    seed_overrides,
    table_parser,
    worker_count,
)
from reproduce.roots import resolve_roots
from reproduce.tables import CellCache, Table

__all__ = ["Table1", "Table1Plan", "embedded_split", "fewshot_needs", "main", "method_config"]


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
    return parser


@dataclass
class Table1Plan(TablePlan):
    """Everything a run needs, validated before anything is trained or written."""

    profile: Table1Profile
    methods: list[str]
    datasets: list[str]
    roots: dict[str, str]
    jobs: int

    def cached(self, job: FewShotJob) -> bool:
        cache = CellCache(self.out)
        return all(cache.get(r.row, r.column, r.fingerprint) is not None for r in job.refs)


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

    overrides = list(args.overrides or []) + seed_overrides(args.seeds)
    if args.reference:
        overrides.append(f"reference={args.reference}")
    profile = load_profile(Table1Profile, "table1", args.config, overrides)
    methods = args.methods.split(",") if args.methods else list(profile.methods)
    for m in methods:
        check_row_method(m)
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
    jobs = worker_count(profile.jobs if args.jobs is None else args.jobs)
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
    return Table1Plan(profile, out, methods, datasets, roots, jobs)


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


def fewshot_job(
    plan: Table1Plan, method: str, dataset: str, seed: int, fresh: bool, progress: bool, index: int
) -> FewShotJob:
    """The job of one (method, dataset, seed): its model's run folder is made to hold a run of
    the model's settings (another settings' run is emptied), its cell fingerprinted."""
    from bmssl.methods import get_method
    from reproduce.pool import spread_devices
    from reproduce.tables import fingerprint, prepare_run_dir, settings_fingerprint

    profile = plan.profile
    config = method_config(profile, method, dataset, plan.roots.get(dataset), seed)
    config.device = spread_devices(config.device, index)
    model_settings = settings_fingerprint(config)
    cells = tuple(profile.cells(dataset))
    key = fingerprint(model_settings, profile.episodes, profile.n_query, profile.classifier, cells)
    run_dir = model_dir(plan.out, method, dataset, seed)
    evaluation = Evaluation(
        dataset, plan.roots.get(dataset), _image_size(profile, dataset), "test", cells,
        f"{dataset}__seed{seed}",
    )  # fmt: skip
    job = FewShotJob(
        method, seed, config, run_dir, (evaluation,), profile.n_query, profile.episodes,
        profile.classifier, profile.threads, progress, (CellRef(method, evaluation.column, key),),
        float(get_method(method).cost),
    )  # fmt: skip
    if fresh or not plan.cached(job):
        prepare_run_dir(run_dir, model_settings, fresh)
    return job


def model_dir(out: Path, method: str, dataset: str, seed: int) -> Path:
    """The run folder of one Table 1 model (shared with the cross-domain table)."""
    return out / "runs" / method / dataset / f"seed{seed}"


class Table1(TableSpec):
    name = "table1"
    run = staticmethod(run_fewshot_job)

    build_parser = staticmethod(build_parser)
    plan = staticmethod(plan_table1)

    def jobs(self, plan: Table1Plan, fresh: bool, progress: bool) -> list[FewShotJob]:
        keys = [(m, d, s) for m in plan.methods for d in plan.datasets for s in plan.profile.seeds]
        return [fewshot_job(plan, *key, fresh, progress, i) for i, key in enumerate(keys)]

    def assemble(self, plan: Table1Plan, cells: Cells, elapsed: float) -> Table:
        from reproduce.table1_report import assemble

        return assemble(plan, cells, elapsed)


main = table_main(Table1())


if __name__ == "__main__":
    main()
