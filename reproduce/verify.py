"""Re-check a results table: retrain some of its cells from scratch and compare them.

    python -m reproduce verify results/table1/cpu                 # 2 cells drawn at random
    python -m reproduce verify results/table1/cpu --cells 4 --seed 1
    python -m reproduce verify results/table1/cpu --cell simclr__digits__seed0

The table is planned again from the command line its JSON records (``meta.provenance.command``,
:mod:`bmssl.provenance`), with ``--out`` (and the cross-domain table's ``--models``) moved to a
temporary folder, so every chosen cell's model is trained from scratch there, with nothing
reused from the results folder, which is only read. Each retrained cell is compared with the
stored one:

- **bit-identical**: every stored number is equal (times aside); what a CPU run on the same
  kind of machine must give (same CPU model, torch, numpy and Python versions);
- **within the seed interval**: elsewhere (another CPU, other library versions, a GPU), each of
  the cell's accuracies differs from the stored one by no more than the half-width of the
  table cell's 95% interval across seeds;
- **MISMATCH** otherwise (on the same kind of CPU machine any difference is one, unless
  ``--within-interval``).

Exit status: 0 when every cell passes, 1 on a mismatch, 2 on a folder it cannot read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmssl.errors import UserError, cli_entry
from reproduce.driver import TableSpec
from reproduce.tables import CellCache, slug

#: the tables a results folder may hold: name -> (module, spec class)
SPECS = {
    "table1": ("reproduce.table1", "Table1"),
    "bissl_table": ("reproduce.bissl_table", "BiSSLTable"),
    "crossdomain": ("reproduce.crossdomain", "CrossDomain"),
}
#: cell keys whose values are not results (settings, or times that vary run to run)
NOT_RESULTS = frozenset({"config", "fingerprint"})
DEFAULT_CELLS = 2


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


def result_numbers(value: Any) -> Any:
    """A cell's results as plain JSON: settings and times (keys ending in ``_s``) left out."""
    if isinstance(value, Mapping):
        return {
            str(k): result_numbers(v)
            for k, v in value.items()
            if k not in NOT_RESULTS and not str(k).endswith("_s")
        }
    if isinstance(value, (list, tuple)):
        return [result_numbers(v) for v in value]
    return value


def canonical(cell: Any) -> str:
    """A cell's results (:func:`result_numbers`) as canonical JSON text."""
    return json.dumps(result_numbers(json.loads(json.dumps(cell, default=str))), sort_keys=True)


def same_results(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two cells hold the same results, bit for bit (through a JSON round trip)."""
    return canonical(a) == canonical(b)


def headline(cell: Mapping[str, Any]) -> dict[str, float]:
    """The cell's values as the table shows them: ``{"digits 5w1s": accuracy, ...}`` (few-shot
    cells) or ``{"digits top-1": %, ...}`` (BiSSL cells)."""
    from reproduce.bissl_report import METRIC_NAMES

    dataset = cell.get("dataset")
    if isinstance(cell.get("cells"), list):
        return {f"{dataset} {n}w{k}s": float(r["mean"]) for n, k, r in cell["cells"]}
    metrics = cell.get("metrics") or {}
    return {
        f"{dataset} {name}": float(metrics[f"test_{key}"])
        for key, name in METRIC_NAMES.items()
        if isinstance(metrics.get(f"test_{key}"), (int, float))
    }


def row_label(name: str, data: Mapping[str, Any], row: str) -> str:
    """The table's label of a cached row (``simclr`` -> ``SimCLR``)."""
    labels = (data.get("meta") or {}).get("labels")
    if isinstance(labels, Mapping) and row in labels:
        return str(labels[row])
    if name == "bissl_table":
        from reproduce.bissl_report import LABELS

        return LABELS.get(row, row)
    return row


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


def _gpus_here() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def runs_on_cpu(device: Any, gpu_count: int) -> bool:
    device = str(device or "auto")
    return device == "cpu" or (device == "auto" and gpu_count == 0)


def expect_identical(stored: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether this machine must repeat the stored cells bit for bit, and why (or why not)."""
    from bmssl import provenance

    if not stored:
        return False, "the table records no provenance (made before it was recorded)"
    mine, theirs = provenance.machine_kind(provenance.collect()), provenance.machine_kind(stored)
    changed = [f"{k} {theirs[k]} -> {mine[k]}" for k in mine if mine[k] != theirs[k]]
    if changed:
        return False, "another kind of machine: " + ", ".join(changed)
    return True, (
        f"same kind of machine ({mine['cpu']}, torch {mine['torch']}, numpy {mine['numpy']}, "
        f"Python {mine['python']})"
    )


@dataclass
class Verdict:
    name: str
    status: str  # "identical", "within", "mismatch"
    text: str
    seconds: float


def judge(
    name: str,
    stored: dict[str, Any],
    fresh: dict[str, Any],
    tolerance: Mapping[str, float | None],
    exact: bool,
    seconds: float,
) -> Verdict:
    """One cell's verdict (see the module docstring); ``tolerance``: each column's half-width."""
    if same_results(stored, fresh):
        return Verdict(name, "identical", "bit-identical", seconds)
    before, after = headline(stored), headline(fresh)
    parts, beyond = [], False
    for column in before:
        old, new = before[column], after.get(column, math.nan)
        half = tolerance.get(column)
        delta = new - old
        inside = half is not None and math.isfinite(delta) and abs(delta) <= half
        beyond |= not inside
        bound = "no seed interval" if half is None else f"±{half:.2f}"
        parts.append(f"{column} {old:.2f} -> {new:.2f} (Δ {delta:+.2f}, {bound})")
    detail = "; ".join(parts) or "the results differ"
    if exact:
        return Verdict(
            name,
            "mismatch",
            f"MISMATCH: not bit-identical on the same kind of machine: {detail}",
            seconds,
        )
    if beyond or not before:
        return Verdict(name, "mismatch", f"MISMATCH beyond the seed interval: {detail}", seconds)
    return Verdict(name, "within", f"within the seed interval: {detail}", seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce verify", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "results", metavar="RESULTS_DIR", help="a table's folder, e.g. results/table1/cpu"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--cells",
        type=int,
        metavar="K",
        help=f"retrain K cells drawn at random (default {DEFAULT_CELLS})",
    )
    which.add_argument(
        "--cell",
        action="append",
        metavar="NAME",
        help="retrain this cell (its cells/NAME.json); repeatable",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the random draw (default: a fresh one, printed)"
    )
    parser.add_argument(
        "--within-interval", action="store_true",
        help="accept differences within the seed interval on the same kind of machine too",
    )  # fmt: skip
    parser.add_argument(
        "--keep", metavar="DIR", help="retrain in DIR and keep it (default: a temporary folder)"
    )
    return parser


def verify(argv: Sequence[str] | None = None) -> int:
    from bmssl.provenance import format_seconds

    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    shown = Path(args.results)
    folder = shown.resolve()  # before moving to the folder the table was made in
    name, data = load_results(shown)
    spec = spec_of(name)
    meta = data.get("meta") or {}
    record = meta.get("provenance")
    exact, why = expect_identical(record)
    exact = exact and not args.within_interval
    scratch = (
        Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bmssl-verify-"))
    )
    try:
        with working_directory(((record or {}).get("command") or {}).get("cwd")):
            plan_args = replan_arguments(spec, data, scratch)
            plan = spec.plan(plan_args)
            spec.before_run(plan)
            jobs = spec.jobs(plan, True, False)
            cells = {f"{slug(r.row)}__{slug(r.column)}": (job, r) for job in jobs for r in job.refs}
            chosen = choose(cells, args, folder)
            stored = {c: stored_cell(folder, cells[c][1].row, cells[c][1].column) for c in chosen}
            where = (
                f"commit {str((record or {}).get('code', {}).get('commit'))[:10]}"
                if record
                else "no provenance"
            )
            gpus = (int(((record or {}).get("machine") or {}).get("gpu_count") or 0), _gpus_here())
            if exact and any(gpus):
                why += "; a cell that ran on a GPU is held to its seed interval"
            print(
                f"verify {shown} ({name}, {meta.get('profile', '?')} profile, {where}): "
                f"{len(chosen)} of {len(cells)} cells retrained from scratch; expecting "
                + ("bit-identical cells: " if exact else "cells within the seed interval: ")
                + why,
                flush=True,
            )
            width = max(len(c) for c in chosen)
            verdicts = []
            for v in run_chosen(spec, name, data, chosen, cells, stored, exact, gpus):
                print(f"  {v.name:<{width}}  {v.text}  [{format_seconds(v.seconds)}]", flush=True)
                verdicts.append(v)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    counts = {s: sum(v.status == s for v in verdicts) for s in ("identical", "within", "mismatch")}
    print(
        f"verdict: {counts['identical']} bit-identical, {counts['within']} within the seed "
        f"interval, {counts['mismatch']} mismatch(es) in {format_seconds(time.perf_counter() - started)}"
    )
    return 1 if counts["mismatch"] else 0


def choose(cells: Mapping[str, Any], args: argparse.Namespace, folder: Path) -> list[str]:
    """The cells named by ``--cell``, or ``--cells K`` drawn at random (a printed seed)."""
    if args.cell:
        unknown = [c for c in args.cell if c not in cells]
        if unknown:
            raise UserError(
                f"cell {unknown[0]!r} is not a cell of the table in {str(folder)!r}; its cells: "
                f"{', '.join(sorted(cells))}"
            )
        return list(dict.fromkeys(args.cell))
    k = DEFAULT_CELLS if args.cells is None else args.cells
    if k < 1:
        raise UserError(f"--cells must be at least 1, got {k}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if args.seed is None:
        print(f"cells drawn with --seed {seed}", file=sys.stderr)
    return random.Random(seed).sample(sorted(cells), min(k, len(cells)))


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


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(verify(argv))
