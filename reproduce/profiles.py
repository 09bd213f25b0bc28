"""Table profiles: the recipe of each results table, as config dataclasses.

A profile is a YAML file ``reproduce/configs/<table>_<name>.yaml`` (or any path) loaded by the
same loader and checks as every method config (:func:`bmssl.config.load_config`), so a bad value
is one line naming it, and ``key=value`` overrides on the command line change it
(``episodes=2000``, ``methods=[simclr,bmssl]``).

A profile may start from another: ``derives: paper`` (a profile name of the same table, or a
YAML path) loads that profile's mapping first and merges this file's on top, mappings key by key
(``method_overrides.bmssl.steps`` replaces only that value), anything else replaced. The
paper-smoke profiles derive from the paper profiles this way and override budgets only, so a
later edit of a paper profile is run by its smoke profile too.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bmssl.config import load_config, parse_overrides, read_yaml_mapping
from bmssl.errors import UserError, check_choice, check_positive
from bmssl.evaluate import CLASSIFIERS

CONFIGS = Path(__file__).resolve().parent / "configs"
#: the BiSSL table's rows: the pipeline paths (:func:`bissl.pipeline.run_method`)
BISSL_PATHS = ("baseline", "bissl")
CELL = re.compile(r"^(\d+)w(\d+)s$")
P = TypeVar("P")


def _check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise UserError("seeds is empty; give at least one seed, e.g. seeds=[0,1,2] or --seeds 3")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {seeds} repeat a seed; each seed must appear once")


def _check_evaluation(profile: Any) -> None:
    """The few-shot tables' shared fields: classifier, episodes, queries, jobs, threads."""
    check_choice("classifier", profile.classifier, CLASSIFIERS)
    for name in ("episodes", "n_query", "jobs"):
        check_positive(name, getattr(profile, name))
    if profile.threads is not None:
        check_positive("threads", profile.threads)


@dataclass
class Table1Profile:
    """Table 1: rows = methods, columns = ``<dataset> <N>w<K>s`` few-shot cells.

    Each method's config: its registry preset called ``preset`` (when it has one) < ``model`` <
    ``method_overrides[method]`` < the dataset's options < dataset, root and seed < the method's
    fixed values. Every method is retrained once per seed; within a seed every method is
    evaluated on the same ``episodes`` episodes.
    """

    profile: str = "cpu"
    preset: str = "cpu"
    episodes: int = 1000
    n_query: int = 15
    classifier: str = "proto"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "simclr"
    threads: int | None = 1
    jobs: int = 1
    methods: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, Any] = field(default_factory=dict)
    #: read tiny synthetic copies of the datasets, in their real layouts, that the command
    #: builds under ``<out>/<profile>/smoke-data`` (:mod:`reproduce.smoke_data`; paper-smoke)
    synthetic_data: bool = False
    #: keep each finished cell's weights and resume state (``*.pt`` under its run folder);
    #: ``false`` deletes them once the cell's result is stored (its records stay)
    keep_checkpoints: bool = True

    def validate(self) -> None:
        _check_evaluation(self)
        _check_seeds(self.seeds)
        if not self.methods:
            raise UserError("the profile lists no methods; set methods=[random,simclr,...]")
        if self.reference not in self.methods:
            raise UserError(
                f"reference={self.reference!r} is not one of the profile's methods "
                f"({', '.join(self.methods)}); pass --reference METHOD"
            )
        if not self.datasets:
            raise UserError("the profile lists no datasets")
        for dataset, options in self.datasets.items():
            if not isinstance(options, dict) or not options.get("cells"):
                raise UserError(
                    f"dataset {dataset!r} of the profile needs a cells list, e.g. "
                    "{image_size: 28, cells: [5w1s, 5w5s]}"
                )
            self.cells(dataset)
        for method, values in self.method_overrides.items():
            if not isinstance(values, dict):
                raise UserError(f"method_overrides.{method} must be a mapping of option: value")

    def cells(self, dataset: str) -> list[tuple[int, int]]:
        """``[(n_way, k_shot)]`` of a dataset's columns."""
        return parse_cells(self.datasets[dataset].get("cells", []), dataset)

    def dataset_options(self, dataset: str) -> dict[str, Any]:
        return {k: v for k, v in self.datasets[dataset].items() if k != "cells"}


@dataclass
class BiSSLTableProfile:
    """The BiSSL table: rows = the pipeline paths (baseline, bissl), columns = per downstream
    dataset the test metrics. Each cell's BiSSL config: the ``bissl`` method's preset called
    ``preset`` < ``config`` < the dataset's options < dataset, root and seed."""

    profile: str = "cpu"
    preset: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] = field(default_factory=lambda: list(BISSL_PATHS))
    metrics: list[str] = field(default_factory=lambda: ["top1", "top5"])
    threads: int | None = 1
    jobs: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    #: read tiny synthetic copies of the downstream and pretext sets, in their real layouts,
    #: that the command builds under ``<out>/<profile>/smoke-data`` (paper-smoke)
    synthetic_data: bool = False
    #: as :attr:`Table1Profile.keep_checkpoints`; the shared pretext models are always kept
    keep_checkpoints: bool = True

    def validate(self) -> None:
        _check_seeds(self.seeds)
        for method in self.methods:
            check_choice("method", method, BISSL_PATHS)
        check_positive("jobs", self.jobs)
        for metric in self.metrics:
            check_choice("metric", metric, ("top1", "top5"))
        if self.threads is not None:
            check_positive("threads", self.threads)
        if not self.datasets:
            raise UserError("the profile lists no datasets")
        for dataset, options in self.datasets.items():
            if options is not None and not isinstance(options, dict):
                raise UserError(f"datasets.{dataset} must be a mapping of BiSSL options (or {{}})")


@dataclass
class CrossDomainProfile:
    """The cross-domain table: rows = methods, columns = ``<target> <N>w<K>s`` few-shot cells.

    The models are the ones Table 1 trains on ``source`` under the Table 1 profile
    ``table1_profile`` (same settings, same run folders: whichever table runs first trains them,
    the other reloads them). ``methods``, ``seeds`` and ``reference`` default to that profile's.
    Each target: its registry name (or ``imagefolder:<path>``) with ``cells``, ``image_size``
    (default: the source's), ``classes`` (``test``: the set's test classes, ``all``: every class)
    and ``optional`` (skipped, with a note, when its root is missing).
    """

    profile: str = "cpu"
    table1_profile: str = "cpu"
    source: str = "glyphs"
    episodes: int = 1000
    n_query: int = 15
    classifier: str = "proto"
    seeds: list[int] | None = None
    methods: list[str] | None = None
    reference: str | None = None
    threads: int | None = 1
    jobs: int = 1
    targets: dict[str, Any] = field(default_factory=dict)
    #: cells of a target given with ``--target`` (default 5-way 1- and 5-shot)
    target_cells: list[str] = field(default_factory=lambda: ["5w1s", "5w5s"])
    synthetic_data: bool = False
    keep_checkpoints: bool = True

    def validate(self) -> None:
        _check_evaluation(self)
        if self.seeds is not None:
            _check_seeds(self.seeds)
        if not self.targets:
            raise UserError("the profile lists no targets")
        for target, options in self.targets.items():
            if not isinstance(options, dict) or not options.get("cells"):
                raise UserError(
                    f"target {target!r} needs a cells list, e.g. {{cells: [5w1s, 5w5s]}}"
                )
            check_choice(
                f"targets.{target}.classes", options.get("classes", "test"), ("test", "all")
            )
            self.cells(target)
        parse_cells(self.target_cells, "target_cells")

    def cells(self, target: str) -> list[tuple[int, int]]:
        return parse_cells(self.targets[target]["cells"], target)


def parse_cells(cells: list[Any], where: str) -> list[tuple[int, int]]:
    """``["5w1s", ...]`` as ``[(5, 1), ...]``; a malformed cell is a :class:`UserError`."""
    out = []
    for cell in cells:
        match = CELL.match(str(cell))
        if not match:
            raise UserError(f"cell {cell!r} of {where} is not of the form <N>w<K>s (e.g. 5w1s)")
        out.append((int(match[1]), int(match[2])))
    return out


def known_profiles(table: str) -> list[str]:
    return sorted(p.stem.removeprefix(f"{table}_") for p in CONFIGS.glob(f"{table}_*.yaml"))


def profile_path(table: str, name_or_path: str) -> Path:
    """``configs/<table>_<name>.yaml`` of a profile name, or the YAML path given."""
    path = Path(name_or_path).expanduser()
    if not path.suffix and not path.exists():
        path = CONFIGS / f"{table}_{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"unknown profile {name_or_path!r}; choose one of "
                f"{', '.join(known_profiles(table))} or pass a YAML path"
            )
    return path


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *heads, last = key.split(".")
        node = out
        for head in heads:
            node = node.setdefault(head, {})
            if not isinstance(node, dict):
                raise UserError(f"{head} is not a mapping, so {key} cannot be set")
        node[last] = value
    return out


def profile_mapping(table: str, name_or_path: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a profile with its ``derives`` chain merged in (parents first)."""
    path = profile_path(table, name_or_path).resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise UserError(f"profile {path.name} derives from itself ({chain}); break the cycle")
    values = read_yaml_mapping(path)
    parent = values.pop("derives", None)
    if parent is None:
        return values
    if not isinstance(parent, str) or not parent:
        raise UserError(
            f"derives in {path.name} must name a profile or a YAML path, got {parent!r}"
        )
    if parent.endswith((".yaml", ".yml")):  # a path, relative to the deriving file
        source = str(path.parent / Path(parent).expanduser())
    else:  # a profile name, never a file of the working directory
        source = str(CONFIGS / f"{table}_{parent}.yaml")
        if not Path(source).is_file():
            raise UserError(
                f"{path.name} derives from unknown profile {parent!r}; choose one of "
                f"{', '.join(known_profiles(table))} or a YAML path"
            )
    return merge(profile_mapping(table, source, (*seen, path)), values)


def load_profile(
    cls: type[P],
    table: str,
    name_or_path: str,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] = (),
) -> P:
    """Profile ``name_or_path`` (``cpu``/``paper``: ``configs/<table>_<name>.yaml``, or a
    YAML path) of table ``table``, with ``key=value`` overrides."""
    path = profile_path(table, name_or_path)
    values = read_yaml_mapping(path)
    if "derives" not in values:
        return load_config(cls, path, overrides)
    values = profile_mapping(table, name_or_path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return load_config(cls, None, merge(values, _nested(dict(extra))))


def table_parser(
    prog: str, doc: str, table: str, out: str, epilog: str, data_root_help: str
) -> argparse.ArgumentParser:
    """The command line both table drivers share: ``[--config PROFILE] [--out DIR] [--quiet]
    [--seeds N] [--methods A,B] [--datasets A,B] [--data-root NAME=PATH] [--data-dir DIR]
    [--download] [--jobs N] [--fresh] [key=value ...]``."""
    from bmssl.cli import Parser, add_skip_corrupt, out_dir

    parser = Parser(
        prog=prog,
        description=doc,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "--profile",
        dest="config",
        default="cpu",
        metavar="PROFILE",
        help=f"a profile ({', '.join(known_profiles(table))}; default cpu) or a YAML file",
    )
    parser.add_argument(
        "--out", type=out_dir, default=Path(out), help=f"output folder (default {out})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the profile's)")
    parser.add_argument("--methods", help="comma-separated subset of the profile's methods")
    parser.add_argument("--datasets", help="comma-separated subset of the profile's datasets")
    parser.add_argument(
        "--data-root", action="append", default=[], metavar="NAME=PATH", help=data_root_help
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="root of every dataset not named by --data-root: DIR/<dataset>",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="before training, fetch the datasets whose root is missing or incomplete "
        "(python -m bmssl.data fetch) into their root; refused for sets without a public source",
    )
    parser.add_argument(
        "--jobs", type=int, help="jobs run at once in worker processes (default: the profile's)"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore cached cells and models")
    add_skip_corrupt(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    return parser


def worker_count(jobs: int) -> int:
    """``--jobs`` (or the profile's ``jobs``) checked, and capped at the CPU count."""
    import os

    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    return min(jobs, os.cpu_count() or 1)


def seed_overrides(seeds: int | None) -> list[str]:
    """``--seeds N`` as a profile override (``seeds=[0,...,N-1]``)."""
    if seeds is None:
        return []
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    return [f"seeds=[{','.join(map(str, range(seeds)))}]"]
