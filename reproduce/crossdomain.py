"""Cross-domain few-shot: the models Table 1 trains on one domain, scored on others.

    python -m reproduce crossdomain                  # cpu: Table 1's glyph models on digits (+ stamps)
    python -m reproduce crossdomain --target imagefolder:/data/my-set
    python -m reproduce crossdomain --config paper --data-root miniimagenet=~/data/mini \\
        --data-dir ~/data/crossdomain                # BSCD-FSL + Tseng et al.'s targets
    python -m reproduce crossdomain --profile paper-smoke   # every target's layout, tiny copies

Rows are Table 1's methods; columns are ``<target> <N>w<K>s`` cells. The models are Table 1's
own (``--models``, default ``results/table1``; the Table 1 profile the cross-domain profile
names, its source dataset, the same settings and run folders): run after Table 1 this command
trains nothing, and run first it trains them where Table 1 will find them. Each target is scored
on episodes over its test classes (``classes: test``; for BSCD-FSL's sets every class is one) or
over every class (``classes: all``), the same episodes for every method within a seed, with the
statistics of Table 1. Results go to ``results/crossdomain/<profile>/``: ``crossdomain.{md,csv,
json,tex}`` and ``accuracy_per_target.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.config_help import options_help
from bmssl.errors import DataNotFoundError, UserError
from reproduce.driver import CellRef, Cells, TablePlan, TableSpec, table_main
from reproduce.fewshot_jobs import Evaluation, FewShotJob, run_fewshot_job
from reproduce.profiles import (
    CrossDomainProfile,
    Table1Profile,
    load_profile,
    parse_cells,
    seed_overrides,
    table_parser,
    worker_count,
)
from reproduce.tables import Table


def build_parser() -> argparse.ArgumentParser:
    parser = table_parser(
        "python -m reproduce crossdomain",
        __doc__ or "",
        "crossdomain",
        "results/crossdomain",
        "key=value overrides set fields of the profile, e.g. episodes=600; options of "
        f"reproduce.profiles.CrossDomainProfile:\n{options_help(CrossDomainProfile)}",
        "a dataset's local root (the source's, as Table 1 was given it, or a target's)",
    )
    parser.add_argument("--reference", help="the row other rows are compared with")
    parser.add_argument(
        "--models",
        default="results/table1",
        metavar="DIR",
        help="Table 1's output folder, whose models are reused (default results/table1)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME",
        help="one more target, e.g. imagefolder:/data/my-set (every class; the profile's "
        "target_cells)",
    )
    return parser


@dataclass
class CrossDomainPlan(TablePlan):
    profile: CrossDomainProfile
    table1: Table1Profile
    methods: list[str]
    seeds: list[int]
    reference: str
    targets: dict[str, dict[str, Any]]
    roots: dict[str, str]
    models: Path
    jobs: int
    skipped: dict[str, str] = field(default_factory=dict)


def _targets(profile: CrossDomainProfile, extra: list[str], source_size: int) -> dict[str, Any]:
    targets = {name: dict(options) for name, options in profile.targets.items()}
    for name in extra:
        targets[name] = {"cells": list(profile.target_cells), "classes": "all"}
    for name, options in targets.items():
        options.setdefault("image_size", source_size)
        options.setdefault("classes", "test")
        parse_cells(options["cells"], name)
    return targets


def _methods_and_reference(
    args: argparse.Namespace, profile: CrossDomainProfile, table1: Table1Profile
) -> tuple[list[str], str]:
    from reproduce.fewshot_jobs import check_row_method

    methods = args.methods.split(",") if args.methods else list(profile.methods or table1.methods)
    for m in methods:
        check_row_method(m)
    reference = args.reference or profile.reference or table1.reference
    if reference not in methods:
        raise UserError(
            f"the reference row {reference!r} is not among the methods run ({', '.join(methods)}); "
            "add it or pass --reference"
        )
    return methods, reference


def plan_crossdomain(args: argparse.Namespace) -> CrossDomainPlan:
    """Validate every name, number and data root before anything is trained or written."""
    from reproduce.table1 import fewshot_needs, method_config

    profile = load_profile(
        CrossDomainProfile, "crossdomain", args.config, list(args.overrides or [])
    )
    table1 = load_profile(Table1Profile, "table1", profile.table1_profile)
    if profile.source not in table1.datasets:
        raise UserError(
            f"source {profile.source!r} is not a dataset of Table 1's {table1.profile} profile "
            f"({', '.join(table1.datasets)})"
        )
    methods, reference = _methods_and_reference(args, profile, table1)
    seeds = list(profile.seeds or table1.seeds)
    if args.seeds is not None:
        seed_overrides(args.seeds)  # checks N >= 1
        seeds = list(range(args.seeds))
    source_size = int(table1.dataset_options(profile.source).get("image_size", 28))
    targets = _targets(profile, list(args.target), source_size)
    if args.datasets:
        wanted = args.datasets.split(",")
        unknown = [d for d in wanted if d not in targets]
        if unknown:
            raise UserError(
                f"target {unknown[0]!r} is not in the profile; choose from {', '.join(targets)}"
            )
        targets = {d: targets[d] for d in wanted}
    for m in methods:
        method_config(table1, m, profile.source, None, seeds[0])  # bad options raise here
    out, models = Path(args.out) / profile.profile, Path(args.models) / table1.profile
    roots = _source_root(
        args, table1, profile.source, models, fewshot_needs(table1, table1.methods, profile.source)
    )
    roots.update(_target_roots(args, profile, targets, out))
    plan = CrossDomainPlan(
        profile, out, table1, methods, seeds, reference, targets, roots, models,
        worker_count(profile.jobs if args.jobs is None else args.jobs),
    )  # fmt: skip
    _check_targets(plan)
    return plan


def _source_root(
    args: argparse.Namespace, table1: Table1Profile, source: str, models: Path, needs: Any
) -> dict[str, str]:
    """The source's root exactly as Table 1 resolves it (its root is part of a model's settings)."""
    from reproduce.roots import resolve_roots

    synthetic = models / "smoke-data" if table1.synthetic_data else None
    return resolve_roots(
        [r for r in args.data_root if r.startswith(f"{source}=")], args.data_dir, [source],
        synthetic=synthetic, synthetic_options={source: needs}, quiet=args.quiet,
    )  # fmt: skip


def _target_roots(
    args: argparse.Namespace, profile: CrossDomainProfile, targets: dict[str, Any], out: Path
) -> dict[str, str]:
    from reproduce.roots import resolve_roots

    rooted = [t for t in targets if ":" not in t]  # imagefolder:<path> names its own folder
    needs = {
        t: {"test": (max(n for n, _ in parse_cells(targets[t]["cells"], t)),
                     max(k for _, k in parse_cells(targets[t]["cells"], t)) + profile.n_query)}
        for t in rooted
    }  # fmt: skip
    given = [r for r in args.data_root if r.split("=", 1)[0] in rooted]
    return resolve_roots(
        given, args.data_dir, rooted, download=args.download, probe=lambda n, r: _probe(targets, n, r),
        synthetic=out / "smoke-data" if profile.synthetic_data else None,
        synthetic_options=needs, quiet=args.quiet,
    )  # fmt: skip


def evaluation_of(plan: CrossDomainPlan, target: str, seed: int) -> Evaluation:
    options = plan.targets[target]
    split = "all" if options["classes"] == "all" else "test"
    cells = tuple(parse_cells(options["cells"], target))
    return Evaluation(
        target, plan.roots.get(target), int(options["image_size"]), split, cells,
        f"{target}__seed{seed}",
    )  # fmt: skip


def _probe(targets: dict[str, Any], name: str, root: str) -> None:
    from reproduce.fewshot_jobs import load_evaluation_set

    options = targets[name]
    split = "all" if options["classes"] == "all" else "test"
    load_evaluation_set(Evaluation(name, root, int(options["image_size"]), split, (), name))


def _check_targets(plan: CrossDomainPlan) -> None:
    """Drop optional targets whose data is missing (noted); check every cell's episode shape."""
    from bmssl.evaluate import check_episode_shape
    from reproduce.fewshot_jobs import load_evaluation_set

    for target in list(plan.targets):
        try:
            data = load_evaluation_set(evaluation_of(plan, target, plan.seeds[0]))
        except DataNotFoundError as err:
            if not plan.targets[target].get("optional"):
                raise
            plan.skipped[target] = str(err)
            del plan.targets[target]
            continue
        for n_way, k_shot in parse_cells(plan.targets[target]["cells"], target):
            check_episode_shape(data, n_way, k_shot, plan.profile.n_query)
    if not plan.targets:
        raise UserError("no target left to evaluate: " + "; ".join(plan.skipped.values()))


def crossdomain_job(
    plan: CrossDomainPlan, method: str, seed: int, fresh: bool, progress: bool, index: int
) -> FewShotJob:
    """One Table 1 model scored on every target; its run folder is Table 1's."""
    from bmssl.methods import get_method
    from reproduce.pool import spread_devices
    from reproduce.table1 import method_config, model_dir
    from reproduce.tables import CellCache, fingerprint, prepare_run_dir, settings_fingerprint

    source, profile = plan.profile.source, plan.profile
    config = method_config(plan.table1, method, source, plan.roots.get(source), seed)
    config.device = spread_devices(config.device, index)
    model_settings = settings_fingerprint(config)
    evaluations = tuple(evaluation_of(plan, t, seed) for t in plan.targets)
    refs = tuple(
        CellRef(method, e.column, fingerprint(
            model_settings, e.dataset, e.root, e.image_size, e.split, e.cells, profile.episodes,
            profile.n_query, profile.classifier,
        ))
        for e in evaluations
    )  # fmt: skip
    run_dir = model_dir(plan.models, method, source, seed)
    cache = CellCache(plan.out)
    if fresh or any(cache.get(r.row, r.column, r.fingerprint) is None for r in refs):
        prepare_run_dir(run_dir, model_settings, fresh)
    return FewShotJob(
        method, seed, config, run_dir, evaluations, profile.n_query, profile.episodes,
        profile.classifier, profile.threads, progress, refs, float(get_method(method).cost),
    )  # fmt: skip


class CrossDomain(TableSpec):
    name = "crossdomain"
    run = staticmethod(run_fewshot_job)

    build_parser = staticmethod(build_parser)
    plan = staticmethod(plan_crossdomain)

    def jobs(self, plan: CrossDomainPlan, fresh: bool, progress: bool) -> list[FewShotJob]:
        keys = [(m, s) for m in plan.methods for s in plan.seeds]
        return [crossdomain_job(plan, m, s, fresh, progress, i) for i, (m, s) in enumerate(keys)]

    def assemble(self, plan: CrossDomainPlan, cells: Cells, elapsed: float) -> Table:
        from reproduce.crossdomain_report import assemble

        return assemble(plan, cells, elapsed)


main = table_main(CrossDomain())


if __name__ == "__main__":
    main()
