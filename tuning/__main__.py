"""Command line: ``python -m tuning {search,spaces,report}``.

Examples::

    python -m tuning spaces
    python -m tuning search bmssl --space bmssl-delta --preset cpu --num-cpus 2
    python -m tuning search bissl --space bissl-lambda-gamma --num-samples 16 --gpus-per-trial 0.5
    python -m tuning search bissl --space bissl-lambda-gamma --address auto --storage /shared/tune
    python -m tuning search bmssl --space bmssl-delta --preset cpu --resume   # after Ctrl-C
    python -m tuning report results/tuning/bmssl-bmssl-delta
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bmssl.config import parse_overrides
from bmssl.errors import cli_entry
from tuning.methods import PRESETS
from tuning.spaces import METHODS, SCHEDULERS, SEARCH_ALGORITHMS, SPACES

EXIT_INTERRUPTED = 130
EXIT_TRIALS_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning",
        description="Ray Tune searches and ablations over BMSSL and BiSSL hyperparameters.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser(
        "search",
        help="run or resume a search",
        description="Run a search (or resume one with --resume); writes <storage>/<name>/report.",
    )
    search.add_argument("method", help=f"method to search: {', '.join(METHODS)}")
    search.add_argument(
        "--space", required=True, help=f"search space: {', '.join(SPACES)} (see `spaces`)"
    )
    search.add_argument("--config", dest="config_path", help="base YAML config of the method")
    search.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="base config overrides, e.g. --set steps=200 width=16",
    )
    search.add_argument(
        "--preset",
        choices=PRESETS,
        help="cpu: tiny networks and few steps, so a trial takes seconds on a CPU",
    )
    search.add_argument(
        "--num-samples",
        type=int,
        help="random search: configurations to sample (default 8); grid: repeats of the grid "
        "(default 1)",
    )
    search.add_argument(
        "--search",
        choices=SEARCH_ALGORITHMS,
        help="random or grid (default: grid for discrete spaces, random otherwise)",
    )
    search.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha (stop poor trials early; default for searches) or fifo (every trial runs "
        "to the end; default for ablations)",
    )
    search.add_argument(
        "--seeds",
        type=_int_list,
        help="comma-separated seeds: run every configuration once per seed (default: each "
        "trial draws its own seed, recorded in the results)",
    )
    search.add_argument(
        "--search-seed", type=int, default=0, help="seed of the sampler (default 0)"
    )
    search.add_argument("--gpus-per-trial", type=float, default=0.0, help="default 0")
    search.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    search.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    search.add_argument(
        "--grace-period", type=int, help="ASHA: steps before a trial may be stopped"
    )
    search.add_argument(
        "--address",
        help="Ray cluster to join ('auto' finds the one `ray start` made); default: start a "
        "local Ray on this machine",
    )
    search.add_argument("--num-cpus", type=int, help="CPUs a local Ray may use (default: all)")
    search.add_argument(
        "--storage",
        default="results/tuning",
        help="directory for results and checkpoints; on a cluster, a path every node mounts "
        "(default results/tuning)",
    )
    search.add_argument("--name", help="search name (default <method>-<space>)")
    search.add_argument(
        "--resume",
        action="store_true",
        help="continue the search <storage>/<name> after an interrupt",
    )
    search.add_argument("--quiet", action="store_true", help="less Tune progress output")

    sub.add_parser("spaces", help="list the search spaces and the methods they apply to")

    report = sub.add_parser("report", help="re-export the report of a search directory")
    report.add_argument("experiment_dir", help="<storage>/<name> of a search")
    return parser


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2)"
        ) from None


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "spaces":
        return _list_spaces()
    if args.command == "report":
        from tuning.search import report_existing

        plan, paths = report_existing(args.experiment_dir)
        print(f"report of {plan['name']!r}: {paths.summary_md}")
        return 0
    return _search(args)


def _list_spaces() -> int:
    for space in SPACES.values():
        methods = ", ".join(space.targets)
        print(f"{space.name:<20} [{space.kind}; {methods}]\n    {space.description}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from tuning.search import SearchRequest, run_search, validate_request

    request = SearchRequest(
        method=args.method,
        space=args.space,
        config_path=args.config_path,
        overrides=parse_overrides(args.overrides),
        preset=args.preset,
        num_samples=args.num_samples,
        search=args.search,
        scheduler=args.scheduler,
        seeds=args.seeds,
        search_seed=args.search_seed,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent,
        grace_period=args.grace_period,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        address=args.address,
        num_cpus=args.num_cpus,
        verbose=0 if args.quiet else 1,
    )
    validate_request(request)
    outcome = run_search(request)
    done = len(outcome.records) - len(outcome.unfinished)
    print(
        f"\nsearch {outcome.plan['name']!r}: {done}/{len(outcome.records)} trials finished in "
        f"{outcome.wall_s:.1f} s{' (resumed)' if outcome.resumed else ''}"
    )
    best = outcome.best
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"best: {params}, seed={best.seed}: val_acc={best.val_acc:.2f} at step {best.step}")
    print(f"report: {outcome.report.summary_md}")
    print(f"plot:   {outcome.report.plot_png}")
    if outcome.report.best_yaml is not None:
        print(f"best config: {outcome.report.best_yaml}")
    failed = [r for r in outcome.records if r.status == "ERROR"]
    if failed:
        print(
            f"{len(failed)} trial(s) failed ({failed[0].trial_id}: {failed[0].error}); see "
            f"{outcome.report.trials_csv}. --resume retries them from their last checkpoint",
            file=sys.stderr,
        )
    if outcome.interrupted:
        print(
            f"interrupted: {len(outcome.unfinished)} trial(s) unfinished; run the same command "
            "with --resume to finish them",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_TRIALS_FAILED if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
