"""The harness's hot paths side by side with the libraries a researcher would otherwise pick.

In one process, each path timed with its peers interleaved round by round (``--repeats``
rounds after a warm-up; ratio = peer time / our time per round, reported as median and min–max):

- ``views``  batched SSL views against kornia.augmentation (28-px ``affine``, 84-px ``strong``);
- ``simclr`` a SimCLR step end to end against lightly's transform + DataLoader + NT-Xent;
- ``meta``   the BMSSL meta-gradient, each of our backends against torchopt's functional inner
  loop and a learn2learn-style clone-and-update unroll (gradients checked in float64);
- ``upper``  BiSSL's upper step against torchopt's and betty's CG implicit gradients.

Peers come from the optional extra (``pip install -e ".[bench]"``); one that does not import is
skipped with the reason printed. Each row also prints peak memory of every side and our step's
FLOP/s (``torch.utils.flop_counter``) against this box's measured float32 matmul peak.
``--paper-memory`` adds the peak resident memory of one paper-preset miniImageNet BMSSL step
per backend (each in a fresh process, ``benchmarks/peers/paper_memory.py``).

    python benchmarks/bench_peers.py                  # every path, 3 rounds, 1 thread, CPU
    python benchmarks/bench_peers.py --quick          # a smoke run
    python benchmarks/bench_peers.py --device cuda    # on a GPU

Writes ``benchmarks/results/peers.json`` (git-ignored). The last line is the worst ratio over
every path and installed peer (our fastest backend for the meta-step).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import measure, report  # noqa: E402
from bmssl.errors import cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402

PATHS = ("views", "simclr", "meta", "upper")


def run_path(name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """The rows of one path (its module imported only when it runs)."""
    if name == "views":
        from benchmarks.peers import views as module
    elif name == "simclr":
        from benchmarks.peers import simclr as module
    elif name == "meta":
        from benchmarks.peers import meta as module
    else:
        from benchmarks.peers import upper as module
    return module.run(args, device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    add("--repeats", type=int, default=3, help="interleaved rounds after a warm-up")
    add("--threads", type=int, default=1, help="torch intra-op threads")
    add("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU or wall time")
    add("--device", default="cpu", help="cpu, cuda or auto")
    add("--seed", type=int, default=0)
    add("--width", type=int, default=32, help="Conv4 width of every network")
    add("--view-batch", type=int, default=256)
    add("--simclr-batch", type=int, default=256)
    add("--workers", type=int, default=0, help="lightly's DataLoader workers (then wall clock)")
    add("--tasks", type=int, default=8, help="B, tasks per meta-batch")
    add("--task-images", type=int, default=10)
    add("--inner-steps", type=int, nargs="+", default=[1, 5])
    add("--orders", nargs="+", choices=("second", "first"), default=["second", "first"])
    add("--upper-batch", type=int, default=64)
    add("--cg-iters", type=int, default=5)
    add("--lam-damp", type=float, default=10.0)
    add("--paper-memory", action="store_true", help="peak memory of a paper-preset step")
    add("--profile", action="store_true", help="top ops of our meta-step and of its peers")
    add("--quick", action="store_true", help="tiny smoke run")
    add("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.width, args.view_batch, args.simclr_batch = 1, 8, 16, 16
        args.tasks, args.task_images, args.inner_steps, args.upper_batch = 2, 4, [1], 8
    if args.workers > 0:
        args.clock = "wall"  # worker processes' CPU time is not the parent's
    return args


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    peak = measure.matmul_peak(device)
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s float32 ({args.threads} thread(s), {device})")
    rows: list[dict[str, Any]] = []
    for name in args.paths:
        for row in run_path(name, args, device):
            rows.append(row)
            for line in report.row_lines(row, peak):
                print(line, flush=True)
    paper = report.paper_memory(args) if args.paper_memory else []
    top = {}
    if args.profile:
        from benchmarks.peers import meta

        top = meta.profiles(args, device)
        for line in report.profile_lines(top):
            print(line)
    setup = {
        "repeats": args.repeats, "clock": args.clock, "threads": args.threads,
        "device": str(device), "torch": torch.__version__, "matmul_peak_flops": peak,
        "flop_rates": {f"{r['path']} | {r['case']}": r.get("flop_rate") for r in rows},
        "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    # The peak is measured again at the end: a neighbour's burst during one probe lowers it.
    peak = max(peak, measure.matmul_peak(device))
    print(f"matmul peak, best of the start and end probes: {peak / 1e9:.1f} GFLOP/s")
    for line in report.flop_lines(rows, peak):
        print(line)
    summary = report.goals(rows, paper)
    write_json(
        args.out,
        {"setup": setup, "rows": rows, "paper_memory": paper, "goals": summary, "profile": top},
    )
    for line in report.goal_lines(summary):
        print(line)
    print(f"wrote {args.out}")
    print(f"worst ratio over peers: {summary['worst_ratio']['median']:.2f}×")


if __name__ == "__main__":
    main()
