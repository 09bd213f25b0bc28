"""False-positive rates of the tables' marks under true nulls: before and after the fix.

Two rows of the *same* method are simulated as the harness records them: per seed, 1000
episodes whose accuracy is a binomial correct count over ``n_way × 15`` queries (5-way), with an
episode difficulty (sd 10 points) shared by both rows of the seed (same episodes), an effect
shared by the seed (sd 2) and a per-model effect of sd ``σ`` (``--sds``, points), so the two
rows' per-seed means differ by about ``√2·σ`` while the true difference is 0. A mark is a false
positive. For each seed count ``S`` (``--seeds``) and ``σ``:

- ``before``: the old rule, the 95% hierarchical bootstrap interval excluding zero
  (:func:`reproduce.stats.paired_difference`, ``--n-boot`` replicates). For speed over
  ``--trials`` trials each resampled seed's episode mean is drawn from its normal limit
  ``N(m_s, v_s / E)`` (exact to well within the Monte-Carlo error at 1000 episodes) instead of
  resampling the episodes one by one; the ``check`` column runs the real function on the first
  ``--check-trials`` trials of the same data;
- ``after``: the seed-level paired t-test, ``sign != 0`` of
  :func:`reproduce.stats.compare_rows`, the function the tables call (with one seed there is no
  test, so no mark).

    python benchmarks/calibration.py              # 2000 trials per cell, about 3-5 minutes
    python benchmarks/calibration.py --quick      # a smoke run (200 trials, no check column)

Writes ``benchmarks/results/calibration.json`` (git-ignored) and prints the table.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bmssl.errors import cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402
from reproduce.stats import compare_rows, paired_difference  # noqa: E402

N_WAY, N_QUERY = 5, 15


def simulate(rng: np.random.Generator, seeds: int, sd_model: float, episodes: int) -> np.ndarray:
    """One null trial: accuracies ``[row (2), seed, episode]`` in % (see the module docstring)."""
    queries = N_WAY * N_QUERY
    level = 60.0 + rng.normal(0.0, 10.0, (1, seeds, episodes)) + rng.normal(0.0, 2.0, (1, seeds, 1))
    model = rng.normal(0.0, sd_model, (2, seeds, 1))
    p = np.clip((level + model) / 100.0, 0.02, 0.98)
    return 100.0 * rng.binomial(queries, p) / queries


def bootstrap_sign(
    diffs: np.ndarray, rng: np.random.Generator, n_boot: int, confidence: float = 0.95
) -> int:
    """The old rule on ``diffs`` (``seeds × episodes``): resample seeds, then each resampled
    seed's episode mean from ``N(m_s, v_s / E)``; the sign of the percentile interval."""
    seeds, episodes = diffs.shape
    means, var = diffs.mean(axis=1), diffs.var(axis=1) / episodes  # population var, as resampling
    draws = rng.integers(0, seeds, size=(n_boot, seeds))
    replicates = (means[draws] + np.sqrt(var[draws]) * rng.standard_normal(draws.shape)).mean(1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return 1 if lo > 0 else -1 if hi < 0 else 0


def run_cell(args: argparse.Namespace, seeds: int, sd_model: float) -> dict[str, Any]:
    rng = np.random.default_rng([args.seed, seeds, int(sd_model * 1000)])
    boot_rng = np.random.default_rng([args.seed, seeds, int(sd_model * 1000), 1])
    before = after = check = 0
    checked = min(args.check_trials, args.trials)
    started = time.perf_counter()
    for k in range(args.trials):
        x = simulate(rng, seeds, sd_model, args.episodes)
        a, b = list(x[0]), list(x[1])
        after += compare_rows({"A": a, "B": b})["A", "B"]["sign"] != 0
        before += bootstrap_sign(x[0] - x[1], boot_rng, args.n_boot) != 0
        if k < checked:
            check += paired_difference(a, b, n_boot=args.n_boot, seed=k)["sign"] != 0
    return {
        "seeds": seeds,
        "sd_model": sd_model,
        "trials": args.trials,
        "before_bootstrap_fpr": before / args.trials,
        "before_bootstrap_check_fpr": check / checked if checked else None,
        "check_trials": checked,
        "after_seed_t_fpr": after / args.trials,
        "mc_bound": 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / args.trials),
        "seconds": time.perf_counter() - started,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000, help="null tables per cell")
    parser.add_argument("--seeds", default="1,3,5,10", help="seed counts, comma-separated")
    parser.add_argument("--sds", default="1,2", help="per-model sd (points), comma-separated")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per seed")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument(
        "--check-trials", type=int, default=200, help="trials also run through the real bootstrap"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run (200 trials, no check)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.check_trials = 200, 0
    return args


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| seeds | model sd | before: bootstrap | (check, real code) | after: seed t | bound |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        check = r["before_bootstrap_check_fpr"]
        check_text = f"{check:.3f} ({r['check_trials']})" if check is not None else "–"
        lines.append(
            f"| {r['seeds']} | {r['sd_model']:g} | {r['before_bootstrap_fpr']:.3f} | "
            f"{check_text} | {r['after_seed_t_fpr']:.3f} | {r['mc_bound']:.3f} |"
        )
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = [
        run_cell(args, int(s), float(sd))
        for sd in args.sds.split(",")
        for s in args.seeds.split(",")
    ]
    report = {
        "description": (
            "null false-positive rate of a table mark: two rows of the same method, binomial "
            f"episodes ({N_WAY}-way, {N_QUERY} queries per class), per-model sd sd_model points"
        ),
        "episodes": args.episodes,
        "n_boot": args.n_boot,
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    write_json(args.out, report)
    print(table(rows))
    print(
        f"false-positive rate of a mark under a true null, {args.trials} trials per row; "
        f"bound = 0.05 + 2.6 MC s.e.; wrote {args.out} in {report['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
