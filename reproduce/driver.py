"""The one driver every results table runs on: plan, cell cache, job pool, writing.

A table is a :class:`TableSpec`: it parses and validates its command line into a plan (nothing
is trained or written before that), lists the jobs that produce its cells, runs one job (a
picklable top-level function, so ``--jobs N`` can run it in a worker process), and assembles
the table from the cells. The driver does the rest the same way for every table:

- every cell is cached as ``<out>/cells/<row>__<column>.json`` with the fingerprint of the
  settings that produced it; a job whose cells are all cached (same fingerprint) is skipped, so a
  rerun or a killed run continues where it stopped (``--fresh`` ignores the cache);
- the missing jobs run through :func:`reproduce.pool.run_jobs`: in this process, or in up to
  ``--jobs`` worker processes (the costliest first; jobs of one ``group`` in order in one worker;
  GPUs round robin through :func:`reproduce.pool.spread_devices`);
- each finished job's cells are stored as soon as it reports (atomic writes), and its weights are
  pruned when the profile sets ``keep_checkpoints: false``;
- the table is assembled from the cache, written as ``<name>.{md,csv,json,tex}`` plus figures,
  with the verdicts on the claims it can test (``claims.{md,json}``, :mod:`reproduce.claims`),
  and printed;
- its provenance (:mod:`bmssl.provenance`: code, software, machine, settings, the resolved
  config of every cell, a fingerprint of each dataset's bytes, the command line and wall time)
  goes into the JSON's ``meta.provenance``, with one line under the Markdown table; ``python -m
  reproduce verify`` re-plans the table from that command line (:mod:`reproduce.verify`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.cli import parse_args, skip_corrupt
from bmssl.errors import cli_entry
from reproduce.claims import write_claims
from reproduce.tables import CellCache, Table, prune_weights

#: every cell of a table, by its cache ``(row, column)``
Cells = Mapping[tuple[str, str], dict[str, Any]]


@dataclass(frozen=True)
class CellRef:
    """Where a cell lives in the cache (``row``, ``column``) and the settings it must match."""

    row: str
    column: str
    fingerprint: str


class TableJob(ABC):
    """What the driver needs of a job; a spec's jobs are frozen dataclasses with these fields."""

    refs: tuple[CellRef, ...]  # the cells the job produces
    run_dir: Path  # the folder its weights live in (pruned unless keep_checkpoints)
    group: str  # jobs of one group run in order in one worker (they share a cached stage)
    cost: float  # relative cost: the costliest run first


@dataclass
class TablePlan:
    """What every plan holds; a spec's plan adds its own fields."""

    profile: Any
    out: Path


class TableSpec(ABC):
    """One results table on the shared driver."""

    #: file stem of the outputs (``<name>.md`` ...) and of the progress bar
    name: str

    @abstractmethod
    def build_parser(self) -> argparse.ArgumentParser:
        """The command line (:func:`reproduce.profiles.table_parser` plus the table's flags)."""

    @abstractmethod
    def plan(self, args: argparse.Namespace) -> TablePlan:
        """Validate every name, number and data root; nothing is trained or written here."""

    @abstractmethod
    def jobs(self, plan: Any, fresh: bool, progress: bool) -> list[Any]:
        """Every job of the table, cached or not (the driver skips those whose cells are cached).

        May prepare the jobs' run folders (a folder of other settings is emptied)."""

    #: ``run(job) -> {(row, column): cell}``; a top-level function (picklable)
    run: Callable[[Any], dict[tuple[str, str], dict[str, Any]]]

    @abstractmethod
    def assemble(self, plan: Any, cells: Cells, elapsed: float) -> Table:
        """Build and write the table (and its figures) from every cell; return it."""

    def before_run(self, plan: Any) -> None:
        """Called once the plan holds, before any job runs: the profile's torch threads."""
        threads = getattr(plan.profile, "threads", None)
        if threads:
            import torch

            torch.set_num_threads(threads)


def missing_jobs(jobs: Sequence[Any], cache: CellCache, fresh: bool) -> list[Any]:
    """The jobs with at least one cell not cached under its fingerprint (all with ``fresh``)."""
    if fresh:
        return list(jobs)
    return [
        job
        for job in jobs
        if any(cache.get(r.row, r.column, r.fingerprint) is None for r in job.refs)
    ]


def run_table(spec: TableSpec, argv: Sequence[str] | None) -> Table:
    """Parse, plan, run the missing jobs, assemble, print: the ``main`` of every table."""
    from bmssl.data.registry import ROOT_HINT

    command = list(argv) if argv is not None else sys.argv[1:]
    args = parse_args(spec.build_parser(), list(argv) if argv is not None else None)
    hint = ROOT_HINT.set("pass --data-root {name}=PATH (or --data-dir DIR holding DIR/{name})")
    try:
        with skip_corrupt(args):
            return _run(spec, args, command)
    finally:
        ROOT_HINT.reset(hint)


def _run(spec: TableSpec, args: argparse.Namespace, command: list[str]) -> Table:
    from tqdm.auto import tqdm

    from bmssl.provenance import now_utc
    from reproduce.pool import run_jobs

    started, started_at = time.perf_counter(), now_utc()
    plan = spec.plan(args)
    spec.before_run(plan)
    cache = CellCache(plan.out)
    progress = not args.quiet
    workers = int(getattr(plan, "jobs", 1) or 1)
    every = spec.jobs(plan, args.fresh, progress and workers <= 1)
    todo = missing_jobs(every, cache, args.fresh)
    bar = tqdm(total=len(todo), desc=spec.name, disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(todo) > 1:
        bar.set_postfix_str(f"{min(workers, len(todo))} workers")

    def store(job: Any, cells: dict[tuple[str, str], dict[str, Any]]) -> None:
        for ref in job.refs:
            cache.put(ref.row, ref.column, cells[ref.row, ref.column], ref.fingerprint)
        if not getattr(plan.profile, "keep_checkpoints", True):
            prune_weights(job.run_dir)
        bar.set_postfix_str(f"{describe(job)}: done")
        bar.update()

    run_jobs(todo, spec.run, workers, store, lambda job: job.cost, group=lambda job: job.group)
    bar.close()
    cells = {(r.row, r.column): cached(cache, r) for job in every for r in job.refs}
    elapsed = time.perf_counter() - started
    table = spec.assemble(plan, cells, elapsed)
    record = provenance_of(spec, plan, every, cells, command, started_at, elapsed)
    line = stamp_provenance(plan.out, spec.name, record)
    write_claims(plan.out, spec.name, json.loads((plan.out / f"{spec.name}.json").read_text()))
    print(table.markdown() + "\n" + line)
    print(
        f"wrote {plan.out / (spec.name + '.md')} (.csv, .json, .tex) and figures in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return table


def provenance_of(
    spec: TableSpec,
    plan: Any,
    jobs: Sequence[Any],
    cells: Cells,
    command: list[str],
    started_at: str,
    elapsed: float,
) -> dict[str, Any]:
    """The table's provenance record: :func:`bmssl.provenance.collect` with the command line
    (what ``verify`` re-plans from), the resolved profile, each cell's config and the datasets
    of every job."""
    from bmssl import provenance

    configs: dict[str, dict[str, Any]] = {}
    for (row, column), cell in cells.items():
        configs.setdefault(row, {})[column] = cell.get("config")
    profile = plan.profile
    return provenance.collect(
        datasets=provenance.fingerprint_datasets(provenance.dataset_refs(*jobs)),
        configs=configs,
        command={"table": spec.name, "argv": command, "cwd": os.getcwd()},
        started_at=started_at,
        wall_time_s=elapsed,
        profile=(
            dataclasses.asdict(profile)
            if dataclasses.is_dataclass(profile) and not isinstance(profile, type)
            else None
        ),
    )


def stamp_provenance(out: Path, name: str, record: dict[str, Any]) -> str:
    """Put ``record`` into ``<name>.json`` (``meta.provenance``) and its one line under the
    table in ``<name>.md``; return the line."""
    from bmssl.io import write_json, write_text
    from bmssl.provenance import summary_line

    line = summary_line(record)
    path = out / f"{name}.json"
    data = json.loads(path.read_text())
    data.setdefault("meta", {})["provenance"] = record
    write_json(path, data)
    markdown = out / f"{name}.md"
    write_text(markdown, markdown.read_text().rstrip("\n") + "\n\n" + line + "\n")
    return line


def cached(cache: CellCache, ref: CellRef) -> dict[str, Any]:
    """The cell ``ref`` names, which a finished run has stored."""
    cell = cache.get(ref.row, ref.column, ref.fingerprint)
    if cell is None:  # another process rewrote it under other settings meanwhile
        raise RuntimeError(f"cell {ref.row} / {ref.column} is missing after its job ran")
    return cell


def describe(job: Any) -> str:
    """The job's own ``describe()``, else ``row on column`` of its first cell (progress bar)."""
    own = getattr(job, "describe", None)
    if callable(own):
        return str(own())
    ref = job.refs[0]
    return f"{ref.row} on {ref.column.replace('__', ', ')}"


def table_main(spec: TableSpec) -> Callable[..., Table]:
    """``main(argv)`` of a table script: :func:`run_table` behind the one error handler."""

    @cli_entry
    def main(argv: Sequence[str] | None = None) -> Table:
        return run_table(spec, argv)

    main.__doc__ = f"Build the {spec.name} table (``--help`` lists the options)."
    return main
