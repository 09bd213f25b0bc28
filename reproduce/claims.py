"""The papers' claims, each tested on what a results table holds, with a verdict.

    python -m reproduce claims                  # every table of the cpu profile that has run
    python -m reproduce claims --profile stamps

A claim is a directional comparison of two rows, tested with the paired t-test across seeds
(:mod:`reproduce.inference`): over one dataset's cells pooled per seed, over every set, or on a
measure of the learning curves. The claims of one table form one Holm family (α = 0.05). Verdicts:

- **supported**: Holm-adjusted p < α and the difference lies in the claimed direction;
- **contradicted**: Holm-adjusted p < α and it lies the other way;
- **inconclusive (underpowered)**: otherwise; the verdict names the smallest difference the test
  would detect with 80% power at the family's level (its MDE), so "no effect shown" is never
  read as "no effect".

Speed claims ("BMSSL reaches its accuracy with fewer image-views") use the validation curves:
for each seed, the target is 95% of the lower of the two methods' final validation accuracies,
each method's views to reach it are read off its curve (linear between validations; a curve
already above it at its first validation counts that validation's views, an upper bound), and
the per-seed difference is log2(views of the other method / views of BMSSL): positive means
BMSSL needed fewer. Its resolution is the validation interval (``eval_every``).

Claims read the table's JSON (``<table>.json``: per-seed means, curves) and never retrain;
``claims.md`` and ``claims.json`` are written beside the table, by the table itself and by
this command.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.errors import UserError, cli_entry
from bmssl.io import write_json, write_text
from reproduce.inference import ALPHA, pooled_paired_t, seed_paired_t
from reproduce.multiplicity import adjust_results

#: target of the speed claims: this fraction of the lower final validation accuracy
REACH_FRACTION = 0.95


@dataclass(frozen=True)
class Claim:
    """``better`` > ``worse`` (row labels), as the paper states it, with where it is tested."""

    text: str
    table: str
    unit: str  # "points" or "log2 views"


def _seed_values(data: dict[str, Any], label: str, column: str) -> list[np.ndarray]:
    """One row's per-seed values in a column, as one-element arrays (the pooled test's input)."""
    raw = data["rows"][label][column]
    values = raw.get("seed_means") or raw.get("per_seed")
    return [np.asarray([v], dtype=np.float64) for v in values]


def pooled(data: dict[str, Any], better: str, worse: str, columns: Sequence[str]) -> dict[str, Any]:
    """The paired t across seeds of ``better − worse`` over ``columns`` pooled per seed."""
    a = {c: _seed_values(data, better, c) for c in columns}
    b = {c: _seed_values(data, worse, c) for c in columns}
    return pooled_paired_t(a, b, ALPHA)


def views_to_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """Image-views at which a validation curve ``[(views, acc), ...]`` first reaches
    ``target`` (linear between validations); ``None`` if it never does."""
    points = sorted((float(v), float(a)) for v, a in curve)
    for i, (views, acc) in enumerate(points):
        if acc >= target:
            if i == 0:
                return views
            v0, a0 = points[i - 1]
            return v0 + (views - v0) * (target - a0) / (acc - a0)
    return None


def speed(curves: dict[str, list[Any]], faster: str, slower: str) -> dict[str, Any] | None:
    """The paired t across seeds of log2(views of ``slower`` / views of ``faster``) to reach
    :data:`REACH_FRACTION` of the lower final accuracy; ``None`` without curves."""
    diffs = []
    for curve_a, curve_b in zip(curves[faster], curves[slower], strict=True):
        if not curve_a or not curve_b:
            return None
        target = REACH_FRACTION * min(curve_a[-1][1], curve_b[-1][1])
        views_a, views_b = views_to_reach(curve_a, target), views_to_reach(curve_b, target)
        if not views_a or not views_b:
            return None
        diffs.append(math.log2(views_b / views_a))
    return seed_paired_t(diffs, ALPHA) if diffs else None


def _dataset_columns(data: dict[str, Any], dataset: str) -> list[str]:
    return [c for c in data["columns"] if c.rsplit(" ", 1)[0] == dataset]


def fewshot_claims(data: dict[str, Any], table: str) -> list[tuple[Claim, dict[str, Any]]]:
    """Table 1's and the cross-domain table's claims: BMSSL against SimCLR and against δ = 0
    per dataset (and over every set), and the speed claims on Table 1's curves."""
    labels = data["meta"].get("labels", {})
    bmssl, simclr, plain = (labels.get(m) for m in ("bmssl", "simclr", "meta-ssl"))
    sets = list(dict.fromkeys(c.rsplit(" ", 1)[0] for c in data["columns"]))
    out = []
    for other, name in ((simclr, "SimCLR"), (plain, "meta-SSL (δ = 0)")):
        if bmssl is None or other is None:
            continue
        for dataset in sets:
            claim = Claim(f"BMSSL > {name} on {dataset}", table, "points")
            out.append((claim, pooled(data, bmssl, other, _dataset_columns(data, dataset))))
        if len(sets) > 1:
            claim = Claim(f"BMSSL > {name}, every set pooled", table, "points")
            out.append((claim, pooled(data, bmssl, other, data["columns"])))
    curves = data["meta"].get("curves", {})
    for dataset, by_label in curves.items():
        for other, name in ((plain, "meta-SSL (δ = 0)"), (simclr, "SimCLR")):
            if bmssl in by_label and other in by_label:
                result = speed(by_label, bmssl, other)
                if result is not None:
                    text = f"BMSSL reaches {REACH_FRACTION:.0%} of the lower final val accuracy "
                    claim = Claim(text + f"in fewer views than {name} on {dataset}", table,
                                  "log2 views")  # fmt: skip
                    out.append((claim, result))
    return out


def bissl_claims(data: dict[str, Any]) -> list[tuple[Claim, dict[str, Any]]]:
    """BiSSL > the fine-tune baseline on each downstream set's top-1 (mAP for multi-label sets)
    and over every set."""
    from reproduce.bissl_report import LABELS

    bissl, base = LABELS["bissl"], LABELS["baseline"]
    if bissl not in data["rows"] or base not in data["rows"]:
        return []
    headline = [c for c in data["columns"] if c.endswith(("top-1", "mAP(11pt)"))]
    out = [
        (Claim(f"BiSSL > fine-tune baseline on {c}", "bissl_table", "points"),
         pooled(data, bissl, base, [c]))
        for c in headline
    ]  # fmt: skip
    if len(headline) > 1:
        claim = Claim("BiSSL > fine-tune baseline, every set pooled", "bissl_table", "points")
        out.append((claim, pooled(data, bissl, base, headline)))
    return out


def verdict(claim: Claim, result: dict[str, Any]) -> str:
    """supported / contradicted / inconclusive (underpowered: the MDE), from the Holm result."""
    if result["sign"] > 0:
        return "supported"
    if result["sign"] < 0:
        return "contradicted"
    if not result["testable"]:
        return f"inconclusive (untestable: {result['reason']})"
    mde = result.get("mde_family")
    if mde is None or (claim.unit == "points" and mde > 100):
        return f"inconclusive (underpowered: no difference within the {claim.unit} scale is detectable)"
    return f"inconclusive (underpowered: detects ≥ {mde:.2f} {claim.unit} at 80%)"


def claims_of(table: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every claim a table can test, Holm-adjusted as one family, with its verdict."""
    found = bissl_claims(data) if table == "bissl_table" else fewshot_claims(data, table)
    adjusted = adjust_results([result for _, result in found], ALPHA)
    return [
        {"claim": claim.text, "table": claim.table, "unit": claim.unit,
         "verdict": verdict(claim, result), **result}
        for (claim, _), result in zip(found, adjusted, strict=True)
    ]  # fmt: skip


def _estimate(row: dict[str, Any]) -> str:
    if row["lo"] is None:
        return f"{row['mean']:+.2f}"
    return f"{row['mean']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]"


def _number(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else f"{value:{spec}}"


def claims_markdown(title: str, rows: list[dict[str, Any]]) -> str:
    """A verdict table: claim, estimate with its 95% t-interval, adjusted p, MDE, verdict."""
    lines = [
        f"**{title}**", "",
        "| Claim | Estimate [95% CI] | unit | p (Holm) | MDE (80%) | seeds | Verdict |",
        "|---|---:|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['claim']} | {_estimate(row)} | {row['unit']} | "
            f"{_number(row['p_adjusted'], '.3g')} | {_number(row.get('mde_family'))} | "
            f"{row['seeds']} | {row['verdict']} |"
        )
    size = rows[0]["family_size"] if rows else 0
    lines += [
        "",
        f"Paired t-test across seeds (the unit of replication is a trained model); Holm over "
        f"this table's {size} testable claim(s) at α = {ALPHA:g}; MDE: the true difference each "
        "test detects with 80% power at the family's level α/m, given the seed spread it observed.",
    ]
    return "\n".join(lines) + "\n"


def write_claims(out_dir: Path, table: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Test a table's claims and write ``claims.md`` and ``claims.json`` beside it."""
    rows = claims_of(table, data)
    profile = data.get("meta", {}).get("profile", "?")
    title = f"Claims tested by {table} ({profile} profile)"
    text = claims_markdown(title, rows)
    payload: dict[str, Any] = {"table": table, "profile": profile, "claims": rows}
    provenance = data.get("meta", {}).get("provenance")
    if provenance:  # the table's (bmssl.provenance): the claims are read off that table
        from bmssl.provenance import summary_line

        text += "\n" + summary_line(provenance) + "\n"
        payload["provenance"] = provenance
    write_text(out_dir / "claims.md", text)
    write_json(out_dir / "claims.json", payload)
    return rows


#: the tables the command reads: (name, results folder)
TABLES = (("table1", "results/table1"), ("bissl_table", "results/bissl_table"),
          ("crossdomain", "results/crossdomain"))  # fmt: skip


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--profile", default="cpu", help="the tables' profile (default cpu)")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="the folder holding table1/, bissl_table/, crossdomain/")  # fmt: skip
    args = parser.parse_args(argv)
    found = 0
    for table, _ in TABLES:
        folder = Path(args.results) / table / args.profile
        path = folder / f"{table}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(
                f"{str(path)!r} is not a results table ({err.msg}); rebuild it"
            ) from None
        rows = write_claims(folder, table, data)
        print(claims_markdown(f"Claims tested by {table} ({args.profile} profile)", rows))
        found += 1
    if not found:
        raise UserError(
            f"no results table of the {args.profile!r} profile under {args.results!r}: run "
            f"python reproduce/table1.py --profile {args.profile} (or bissl_table.py, "
            "python -m reproduce crossdomain) first"
        )
    return 0
