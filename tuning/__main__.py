"""Command line: ``python -m tuning {search,spaces,report}``, in the harness's one dialect.

    python -m tuning search METHOD --space SPACE [--config FILE|PRESET] [--out DIR|URI] [--quiet]
        [key=value ...] [--num-samples N] [--search {random,grid}] [--scheduler {asha,fifo}]
        [--seeds 0,1] [--gpus-per-trial F] [--address ADDR] [--resume] ...
    python -m tuning spaces
    python -m tuning report DIR

Examples::

    python -m tuning search bmssl --space bmssl-delta --config tiny --num-cpus 2
    python -m tuning search bissl --space bissl-lambda-gamma --config tiny bilevel.alternations=12
    python -m tuning search bissl --space bissl-lambda-gamma --num-samples 16 --gpus-per-trial 0.5
    python -m tuning search bmssl --space bmssl-delta --address auto --out /shared/tune
    python -m tuning search bmssl --space bmssl-delta --config tiny --resume   # after Ctrl-C
    python -m tuning report results/tuning/bmssl-bmssl-delta
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bmssl.cli import Parser, parse_args, skip_corrupt, split_positional, verb_parser
from bmssl.errors import UserError, cli_entry, shown
from tuning.plan import DEFAULT_STORAGE
from tuning.spaces import SCHEDULERS, SEARCH_ALGORITHMS, SPACES

EXIT_INTERRUPTED = 130
EXIT_TRIALS_FAILED = 1
#: options of ``search`` that take no value (everything else starting with -- takes one)
_FLAGS = ("--quiet", "--resume", "--skip-corrupt", "-h", "--help")


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``method``, ``search --help`` lists that method's config options."""
    parser = Parser(
        prog="python -m tuning",
        description="Ray Tune searches and ablations over the registered methods.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search(sub, method)
    verb_parser(
        sub,
        "spaces",
        "list the search spaces and the methods they apply to",
        config=False,
        out=None,
    )
    verb_parser(
        sub,
        "report",
        "rewrite the report of a search directory (DIR = <out>/<name>, a path or URI)",
        config=False,
        out=None,
    )
    return parser


def _add_search(sub: Any, method: str | None) -> None:
    """``search``: its shared options (``verb_parser``), then what, how, where and on what."""
    config_cls: type | None = None
    presets: tuple[str, ...] = ()
    if method is not None:
        from bmssl.methods import get_method

        shown_method = get_method(method)
        config_cls, presets = shown_method.config_class(), tuple(shown_method.presets)
    search = verb_parser(
        sub,
        "search",
        "run (or resume, with --resume) a search of METHOD over --space; "
        "key=value options set the base config of every trial",
        config_cls=config_cls,
        out=None,
        presets=presets,
        images=True,
    )
    _add_plan_options(search)
    _add_resource_options(search)


def _add_plan_options(search: argparse.ArgumentParser) -> None:
    """What is searched and how: space, storage, samples, algorithm, scheduler, seeds, name."""
    search.add_argument(
        "--space", required=True, help=f"search space: {', '.join(SPACES)} (see `spaces`)"
    )
    search.add_argument(
        "--out",
        "--storage",
        dest="out",
        default=DEFAULT_STORAGE,
        metavar="DIR",
        help="storage: a directory (on a cluster, one every node mounts) or a URI Ray accepts "
        f"(file://, s3://, gs://); the search lives in <out>/<name> (default {DEFAULT_STORAGE})",
    )
    search.add_argument(
        "--num-samples",
        type=_count,
        help="random search: configurations to sample (default 8); grid: repeats of the grid "
        "(default 1)",
    )
    search.add_argument(
        "--search",
        choices=SEARCH_ALGORITHMS,
        help="random or grid (default: grid for ablations, random for searches)",
    )
    search.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha (stop poor trials early; default for searches whose metric is reported at "
        "every validation) or fifo (every trial runs to the end)",
    )
    search.add_argument(
        "--seeds",
        type=_seed_list,
        help="comma-separated seeds: run every configuration once per seed (default: 0,1 for "
        "ablations; one seed drawn per trial for searches)",
    )
    search.add_argument(
        "--search-seed", type=_seed, default=0, help="seed of the sampler (default 0)"
    )
    search.add_argument(
        "--grace-period", type=_count, help="ASHA: steps before a trial may be stopped"
    )
    search.add_argument("--name", help="search name (default <method>-<space>)")
    search.add_argument(
        "--resume", action="store_true", help="continue the search <out>/<name> after an interrupt"
    )


def _add_resource_options(search: argparse.ArgumentParser) -> None:
    """Where trials run and what each takes."""
    search.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="GPUs per trial: 0 (default), a fraction to share a GPU, or 1",
    )
    search.add_argument("--cpus-per-trial", type=float, default=1.0, help="default 1")
    search.add_argument("--max-concurrent", type=_count, help="cap on trials running at once")
    search.add_argument(
        "--address",
        help="Ray cluster to join (HOST:PORT, or 'auto' for the one `ray start` made here); "
        "default: start a local Ray on this machine",
    )
    search.add_argument("--num-cpus", type=_count, help="CPUs a local Ray may use (default: all)")


#: the largest count or seed an option takes (Tune and numpy take 32-bit seeds and counts)
_INT_LIMIT = 2**31 - 1


def _integer(text: str, low: int, what: str) -> int:
    """``text`` as an integer in ``[low, 2**31 - 1]``, else argparse's one-line error."""
    try:
        value = int(text.strip().replace("_", "")) if len(text) <= 30 else None
    except ValueError:
        value = None
    if value is None or not low <= value <= _INT_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not {what} between {low} and {_INT_LIMIT}"
        )
    return value


def _count(text: str) -> int:
    return _integer(text, 1, "a whole number")


def _seed(text: str) -> int:
    return _integer(text, 0, "a seed (a whole number)")


def _seed_list(text: str) -> list[int]:
    parts = [part for part in text.split(",") if part.strip()]
    try:
        if parts:
            return [_seed(part) for part in parts]
    except argparse.ArgumentTypeError:
        pass
    raise argparse.ArgumentTypeError(
        f"{shown(text)} is not a comma-separated list of seeds, whole numbers between 0 and "
        f"{_INT_LIMIT} (e.g. 0,1,2)"
    )


def _method_word(argv: Sequence[str]) -> str | None:
    """The METHOD of ``search METHOD ...``: its first bare word that is no option's value."""
    if not argv or argv[0] != "search":
        return None
    skip = False
    for token in argv[1:]:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = "=" not in token and token not in _FLAGS
        elif "=" not in token:
            return token
    return None


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(_method_word(argv)), argv, positional=True)
    word, overrides = split_positional(args.overrides)
    if args.command == "spaces":
        return _list_spaces()
    if args.command == "report":
        if word is None or overrides:
            raise UserError("report takes one directory: python -m tuning report <out>/<name>")
        from tuning.search import report_existing

        plan, _, experiment = report_existing(word)
        print(f"report of {plan.name!r}: {experiment.child('report').display('summary.md')}")
        return 0
    if word is None:
        raise UserError("search needs a METHOD: python -m tuning search METHOD --space SPACE")
    with skip_corrupt(args):  # trials read images in Ray's workers, which inherit it
        return _search(args, word, overrides)


def _list_spaces() -> int:
    from tuning.spaces import SPACES

    for space in SPACES.values():
        methods = ", ".join(m.name for m in space.applicable_methods()) or "none registered"
        print(
            f"{space.name:<20} [{space.kind}; varies {', '.join(space.fields)}; methods: "
            f"{methods}]\n    {space.description}"
        )
    return 0


def _search(args: argparse.Namespace, method: str, overrides: list[str]) -> int:
    from tuning.plan import SearchRequest
    from tuning.search import run_search

    outcome = run_search(
        SearchRequest(
            method=method,
            space=args.space,
            config=args.config,
            overrides=overrides,
            num_samples=args.num_samples,
            search=args.search,
            scheduler=args.scheduler,
            seeds=args.seeds,
            search_seed=args.search_seed,
            gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial,
            max_concurrent=args.max_concurrent,
            grace_period=args.grace_period,
            out=args.out,
            name=args.name,
            resume=args.resume,
            address=args.address,
            num_cpus=args.num_cpus,
            quiet=args.quiet,
        )
    )
    done = len(outcome.records) - len(outcome.unfinished)
    print(
        f"\nsearch {outcome.plan.name!r}: {done}/{len(outcome.records)} trials finished in "
        f"{outcome.wall_s:.1f} s{' (resumed)' if outcome.resumed else ''}"
    )
    best = outcome.best
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"best: {params}, seed={best.seed}: val_acc={best.val_acc:.2f} at step {best.step}")
    report = outcome.report_dir
    print(f"report: {report.display('summary.md')}")
    print(f"plot:   {report.display('accuracy_vs_params.png')}")
    if outcome.report.best_yaml is not None:
        print(f"best config: {report.display('best_config.yaml')}")
    failed = [r for r in outcome.records if r.status == "ERROR"]
    if failed:
        print(
            f"{len(failed)} trial(s) failed ({failed[0].trial_id}: {failed[0].error}); see "
            f"{report.display('trials.csv')}. --resume retries them from their last checkpoint",
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
