"""``python -m reproduce verify``'s re-planning and retraining (:mod:`reproduce.verify`).

A results folder's table is read (:func:`load_results`, :func:`stored_cell`) and planned again
from the command line its JSON records (:func:`replan_arguments`, run in the folder the table was
made in: :func:`working_directory`), with its outputs moved to a scratch folder; each job that
makes a chosen cell is run once from scratch and the cell judged (:func:`run_chosen`, with the
verdicts of :mod:`reproduce.verify_verdicts`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bmssl.errors import UserError
from reproduce.driver import TableSpec
from reproduce.tables import CellCache
from reproduce.verify_verdicts import Verdict, headline, judge, row_label, runs_on_cpu

#: the tables a results folder may hold: name -> (module, spec class)
SPECS = {
    "table1": ("reproduce.table1", "Table1"),
    "bissl_table": ("reproduce.bissl_table", "BiSSLTable"),
    "crossdomain": ("reproduce.crossdomain", "CrossDomain"),
}


def spec_of(name: str) -> TableSpec:
    module, cls = SPECS[name]
    return getattr(importlib.import_module(module), cls)()


def load_results(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """``(table name, table JSON)`` of a results folder (``results/table1/cpu``); a folder
    without a readable table is a :class:`UserError` (exit 2)."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(
            f"{str(path)!r} is not a folder; pass a results folder such as results/table1/cpu"
        )
    found = [name for name in SPECS if (path / f"{name}.json").is_file()]
    if not found:
        raise UserError(
            f"{str(path)!r} holds no results table ({', '.join(n + '.json' for n in SPECS)}); pass "
            "the folder a table command wrote, such as results/table1/cpu"
        )
    name = found[0]
    try:
        data = json.loads((path / f"{name}.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"{str(path / (name + '.json'))!r} cannot be read ({err}); rebuild the table"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), dict):
        raise UserError(
            f"{str(path / (name + '.json'))!r} is not a results table; rebuild the table"
        )
    return name, data


def stored_cell(folder: Path, row: str, column: str) -> dict[str, Any]:
    path = CellCache(folder).path(row, column)
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"cell {path.name} of {str(folder)!r} cannot be read ({type(err).__name__}); the "
            "results folder is incomplete: rebuild the table"
        ) from None
    if not isinstance(cell, dict):
        raise UserError(f"cell {path.name} of {str(folder)!r} is not a cell; rebuild the table")
    return cell


@contextlib.contextmanager
def working_directory(path: str | None) -> Iterator[None]:
    """Run in the folder the table was made in (its relative paths), when it exists here."""
    if not path or not Path(path).is_dir():
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def replan_arguments(spec: TableSpec, data: Mapping[str, Any], scratch: Path) -> argparse.Namespace:
    """The table's recorded command line, with its outputs moved under ``scratch``, nothing
    downloaded, one job at a time and no cache."""
    from bmssl.cli import parse_args

    meta = data.get("meta") or {}
    command = (meta.get("provenance") or {}).get("command") or {}
    argv = command.get("argv")
    if not isinstance(argv, list) or command.get("table") != spec.name:
        argv = ["--config", str(meta.get("profile", "cpu"))]  # a table made before provenance
    args = parse_args(spec.build_parser(), [str(a) for a in argv])
    args.out, args.quiet, args.fresh, args.jobs, args.download = (
        str(scratch / "out"), True, True, 1, False,
    )  # fmt: skip
    if hasattr(args, "models"):
        args.models = str(scratch / "models")
    return args


def settings_changes(stored: Mapping[str, Any] | None, config: Any) -> list[str]:
    """Options of the re-planned config that differ from the stored cell's (roots, device and
    options the stored config predates left out)."""
    from bmssl.provenance import flatten

    if not isinstance(stored, Mapping) or not dataclasses.is_dataclass(config):
        return []
    before, now = flatten(stored), flatten(dataclasses.asdict(config))
    skip = ("data_root", "device", "root")
    return [
        f"{k}: {before[k]!r} -> {now.get(k)!r}"
        for k in sorted(before)
        if k.rsplit(".", 1)[-1] not in skip and k in now and before[k] != now[k]
    ]


def run_chosen(
    spec: TableSpec,
    name: str,
    data: Mapping[str, Any],
    chosen: list[str],
    cells: Mapping[str, Any],
    stored: Mapping[str, dict[str, Any]],
    exact: bool,
    gpus: tuple[int, int] = (0, 0),
) -> Iterator[Verdict]:
    """Run each job that makes a chosen cell once (from scratch) and judge the chosen cells:
    bit for bit when ``exact`` and the cell ran on the CPU then and now (``gpus``: the GPUs
    the table's machine had and this one has)."""
    done: dict[int, tuple[dict[Any, Any], float]] = {}
    for cell_name in chosen:
        job, ref = cells[cell_name]
        if id(job) not in done:
            for note in settings_changes(stored[cell_name].get("config"), job.config):
                print(
                    f"  note: {cell_name}: settings differ from the stored cell's: {note}",
                    flush=True,
                )
            begun = time.perf_counter()
            done[id(job)] = (spec.run(job), time.perf_counter() - begun)
        results, seconds = done[id(job)]
        label = row_label(name, data, ref.row)
        row = (data.get("rows") or {}).get(label) or {}
        fresh = results[ref.row, ref.column]
        tolerance = {
            column: (row.get(column) or {}).get("half_width") for column in headline(fresh)
        }
        config = stored[cell_name].get("config") or {}
        on_cpu = runs_on_cpu(config.get("device"), gpus[0]) and runs_on_cpu(
            getattr(job.config, "device", "auto"), gpus[1]
        )
        yield judge(cell_name, stored[cell_name], fresh, tolerance, exact and on_cpu, seconds)
