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
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bmssl.errors import UserError, cli_entry
from reproduce.tables import slug
from reproduce.verify_replan import (  # noqa: F401 (re-exported: re-planning, retraining)
    SPECS,
    load_results,
    replan_arguments,
    run_chosen,
    settings_changes,
    spec_of,
    stored_cell,
    working_directory,
)
from reproduce.verify_verdicts import (  # noqa: F401 (re-exported: the verdicts)
    NOT_RESULTS,
    Verdict,
    canonical,
    expect_identical,
    headline,
    judge,
    result_numbers,
    row_label,
    runs_on_cpu,
    same_results,
)

DEFAULT_CELLS = 2


def _gpus_here() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(verify(argv))
