"""Compare two results folders of one table: cell by cell, and how they were made.

    python -m reproduce compare results/table1/cpu ~/other-machine/results/table1/cpu

For every row and column the two tables share: each table's mean over the seeds both ran, the
paired difference B − A across those seeds (seed s of A against seed s of B: the same episodes,
so the pair shares its evaluation noise) with its 95% t-interval and p-value
(:func:`reproduce.inference.seed_paired_t`), and how many seeds gave bit-identical values. Then
every difference between the two provenance records (``meta.provenance``,
:mod:`bmssl.provenance`): commit and local edits, library versions, machine, torch settings,
data fingerprints, the command line and profile, and the cells' configs (grouped by option).

Exit status 0; 2 when a folder holds no readable table or the two hold different tables.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.errors import UserError, cli_entry
from reproduce.verify import load_results

#: provenance keys that differ between any two runs (shown as the wall-time line instead)
VOLATILE = ("created_at", "started_at", "wall_time_s", "command.cwd", "configs")


def seed_values(raw: Any) -> list[float] | None:
    """A table cell's per-seed values (few-shot ``seed_means``, BiSSL ``per_seed``)."""
    if not isinstance(raw, Mapping):
        return None
    values = raw.get("seed_means") or raw.get("per_seed")
    return [float(v) for v in values] if isinstance(values, list) and values else None


def compare_cells(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per (row, column) both tables hold: the means over the shared seeds, the
    paired t of B − A across them, and the count of bit-identical seeds."""
    from reproduce.inference import seed_paired_t

    seeds_a = list((a.get("meta") or {}).get("seeds") or [])
    seeds_b = list((b.get("meta") or {}).get("seeds") or [])
    out = []
    for row, columns in (a.get("rows") or {}).items():
        other = (b.get("rows") or {}).get(row)
        if not isinstance(other, Mapping) or not isinstance(columns, Mapping):
            continue
        for column in a.get("columns") or []:
            va, vb = seed_values(columns.get(column)), seed_values(other.get(column))
            if va is None or vb is None:
                continue
            shared = _shared_seeds(seeds_a, seeds_b, len(va), len(vb))
            if not shared:
                continue
            xa = np.asarray([va[i] for i, _ in shared])
            xb = np.asarray([vb[j] for _, j in shared])
            diff = xb - xa
            result = seed_paired_t(diff) if np.all(np.isfinite(diff)) else None
            out.append({
                "row": row, "column": column, "seeds": len(shared),
                "a": float(xa.mean()), "b": float(xb.mean()), "identical": int((xa == xb).sum()),
                "test": result,
            })  # fmt: skip
    return out


def _shared_seeds(
    seeds_a: list[Any], seeds_b: list[Any], n_a: int, n_b: int
) -> list[tuple[int, int]]:
    """Index pairs of the seeds both tables ran (by position when a table lists none)."""
    if len(seeds_a) != n_a or len(seeds_b) != n_b:
        return [(i, i) for i in range(min(n_a, n_b))]
    where = {s: j for j, s in enumerate(seeds_b)}
    return [(i, where[s]) for i, s in enumerate(seeds_a) if s in where]


def _difference_text(entry: dict[str, Any]) -> tuple[str, str]:
    result = entry["test"]
    if entry["identical"] == entry["seeds"]:
        return "0 (identical)", "–"
    if result is None:
        return "–", "–"
    if result["lo"] is None:
        why = "1 seed" if entry["seeds"] < 2 else "constant"
        return f"{result['mean']:+.2f} ({why})", "–"
    return f"{result['mean']:+.2f} [{result['lo']:+.2f}, {result['hi']:+.2f}]", f"{result['p']:.3g}"


def cells_markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| Method | Column | A | B | Δ B − A [95% CI] | p | identical seeds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        delta, p = _difference_text(e)
        lines.append(
            f"| {e['row']} | {e['column']} | {e['a']:.2f} | {e['b']:.2f} | {delta} | {p} | "
            f"{e['identical']}/{e['seeds']} |"
        )
    return "\n".join(lines)


def provenance_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """Lines ``key: A -> B`` for every provenance difference; the cells' configs grouped by
    option (``configs: data_root differs in 6 of 6 cells, e.g. ...``)."""
    from bmssl.provenance import differences, flatten

    if not a or not b:
        missing = " and ".join(n for n, r in (("A", a), ("B", b)) if not r)
        return [f"{missing} record(s) no provenance (made before it was recorded)"]
    lines = [f"{key}: {_show(x)} -> {_show(y)}" for key, x, y in differences(a, b, VOLATILE)]
    ca, cb = flatten(a.get("configs") or {}), flatten(b.get("configs") or {})
    by_option: dict[str, list[tuple[str, Any, Any]]] = {}
    cells = {k.rsplit(".", 1)[0] for k in ca} | {k.rsplit(".", 1)[0] for k in cb}
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key) != cb.get(key):
            cell, option = key.rsplit(".", 1) if "." in key else ("", key)
            by_option.setdefault(option, []).append((cell, ca.get(key), cb.get(key)))
    for option, changes in sorted(by_option.items()):
        cell, x, y = changes[0]
        lines.append(
            f"configs: {option} differs in {len(changes)} of {len(cells)} cells, e.g. {cell}: "
            f"{_show(x)} -> {_show(y)}"
        )
    return lines


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wall_line(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    from bmssl.provenance import format_seconds

    def wall(data: Mapping[str, Any]) -> str:
        value = (data.get("meta") or {}).get("wall_time_s")
        return "?" if not isinstance(value, (int, float)) else format_seconds(float(value))

    return f"wall time: A {wall(a)}, B {wall(b)} (cached cells make a rerun faster)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("a", metavar="A", help="a results folder, e.g. results/table1/cpu")
    parser.add_argument("b", metavar="B", help="another results folder of the same table")
    return parser


def compare(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name_a, a = load_results(args.a)
    name_b, b = load_results(args.b)
    if name_a != name_b:
        raise UserError(
            f"{args.a!r} holds {name_a} but {args.b!r} holds {name_b}; compare two folders of "
            "the same table"
        )
    entries = compare_cells(a, b)
    if not entries:
        raise UserError(f"the two {name_a} tables share no row and column with per-seed values")
    print(f"compare {name_a}: A = {Path(args.a)}, B = {Path(args.b)}")
    print(f"A: {_origin(a)}\nB: {_origin(b)}\n")
    print(cells_markdown(entries))
    same = sum(e["identical"] == e["seeds"] for e in entries)
    tested = [e for e in entries if e["test"] and e["test"]["p"] is not None]
    largest = max(entries, key=lambda e: abs(e["b"] - e["a"]))
    significant = sum(e["test"]["p"] < e["test"]["alpha"] for e in tested)
    print(
        f"\n{same} of {len(entries)} cells bit-identical on every shared seed; largest |Δ| "
        f"{abs(largest['b'] - largest['a']):.2f} ({largest['row']}, {largest['column']}); "
        f"{significant} of {len(tested)} testable differences with p < 0.05 (unadjusted)"
    )
    print(wall_line(a, b))
    lines = provenance_differences(
        (a.get("meta") or {}).get("provenance"), (b.get("meta") or {}).get("provenance")
    )
    print(f"\nProvenance differences (A -> B): {len(lines) or 'none'}")
    for line in lines:
        print(f"  {line}")
    return 0


def _origin(data: Mapping[str, Any]) -> str:
    record = (data.get("meta") or {}).get("provenance")
    if not record:
        return f"{(data.get('meta') or {}).get('profile', '?')} profile, no provenance recorded"
    from bmssl.provenance import summary_line

    return summary_line(record).removeprefix("Provenance: ")


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(compare(argv))
