"""The one command-line dialect of every entry point of the harness.

    python -m <tool> <verb> [--config FILE|PRESET] [--out DIR] [--quiet] [key=value ...]

``key=value`` overrides (dotted for sections: ``finetune.lr=0.01``) may stand anywhere after the
verb; ``--quiet`` is the one switch that silences progress bars and chatty logs; ``--help`` of a
verb lists every option of its config with type and default, generated from the dataclass.

A mistake on the command line is one line on stderr and exit code 2 (:class:`Parser`): an
unknown or malformed option, an option given twice (``--out a --out b``, ``--out`` and its
alias ``--storage``: both values are named, neither is picked silently) or an empty ``--out``.
``--skip-corrupt``, on every verb that reads images, leaves undecodable image files out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bmssl.config import config_to_yaml
from bmssl.config_help import options_help
from bmssl.errors import USER_ERROR_EXIT_CODE, one_line, shown

_GIVEN = "_options_given"


class _StoreOnce(argparse._StoreAction):
    """``store`` that refuses a second value for the same destination (naming both)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        given: dict[str, tuple[str, Any]] = namespace.__dict__.setdefault(_GIVEN, {})
        if self.dest in given:
            first, value = given[self.dest]
            parser.error(
                f"{option_string} is given twice ({first} {_as_typed(value)} and "
                f"{option_string} {_as_typed(values)}); keep one"
            )
        given[self.dest] = (str(option_string), values)
        super().__call__(parser, namespace, values, option_string)


def _as_typed(value: Any) -> str:
    """A parsed option value as the user typed it (a path without ``PosixPath(...)``)."""
    return shown(str(value) if isinstance(value, Path) else value)


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are ONE line (``error: ...; see PROG --help``, exit 2)
    and whose options may each be given once. Sub-parsers are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT_CODE, f"error: {one_line(message)} (see {self.prog} --help)\n")


def out_dir(text: str) -> Path:
    """``--out``'s type: a folder path; empty or blank text is refused (it would mean ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is empty; pass the folder to write to (for example --out runs/a)"
        )
    return Path(text)


def add_skip_corrupt(parser: argparse.ArgumentParser) -> None:
    """The ``--skip-corrupt`` switch of a verb that reads images (see :func:`skip_corrupt`)."""
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave out image files that cannot be decoded (corrupt, truncated, or larger than "
        "Pillow's decompression-bomb limit) instead of stopping with an error",
    )


@contextlib.contextmanager
def skip_corrupt(args: argparse.Namespace) -> Iterator[None]:
    """While the command runs, pass ``--skip-corrupt`` on to the image loaders (and to the
    processes it starts: Ray's workers, DataLoader workers) through ``BMSSL_SKIP_CORRUPT``;
    the environment is restored afterwards, so a ``main`` called in-process leaks nothing."""
    if not getattr(args, "skip_corrupt", False):
        yield
        return
    from bmssl.data.images import SKIP_CORRUPT_ENV  # the loaders' switch (imports Pillow)

    old = os.environ.get(SKIP_CORRUPT_ENV)
    os.environ[SKIP_CORRUPT_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SKIP_CORRUPT_ENV, None)
        else:
            os.environ[SKIP_CORRUPT_ENV] = old


def verb_parser(
    sub: Any,
    verb: str,
    help_text: str,
    *,
    config_cls: type | None = None,
    defaults: Any = None,
    config: bool = True,
    out: str | None = "run directory",
    presets: Sequence[str] = (),
    images: bool = False,
) -> argparse.ArgumentParser:
    """A sub-parser with the shared options; its epilog lists ``config_cls``'s options.

    ``defaults``: the config in force without ``--config`` or overrides (a method's defaults,
    its fixed values included), shown in the epilog; ``config_cls()`` when not given.
    ``images``: the verb reads images, so it takes ``--skip-corrupt``."""
    epilog = None
    if config_cls is not None:
        listed = options_help(config_cls, defaults)
        epilog = f"options (key=value) of {config_cls.__name__}, defaults in force:\n{listed}"
    parser = sub.add_parser(
        verb,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config:
        where = f"a preset ({', '.join(presets)}) or " if presets else ""
        parser.add_argument(
            "--config", metavar="FILE", help=f"{where}a YAML file of options, applied first"
        )
    if out is not None:
        parser.add_argument("--out", type=out_dir, metavar="DIR", help=out)
    if images:
        add_skip_corrupt(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or chatty logs")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides")
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, positional: bool = False
) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` tokens after options.

    argparse fills a positional list only before the first option, so ``train --out R steps=5``
    would fail; leftover tokens that look like ``key=value`` join ``args.overrides`` (where the
    verb has them), anything else is an error naming the stray tokens. With ``positional`` one
    bare word may stand among them (a method name), and goes first.
    """
    args, extra = parser.parse_known_args(argv)
    args.__dict__.pop(_GIVEN, None)
    if positional and hasattr(args, "overrides"):
        words = [t for t in extra if not t.startswith("-") and "=" not in t]
        if words and not split_positional(args.overrides or [])[0]:
            extra.remove(words[0])
            args.overrides = [words[0], *(args.overrides or [])]
    stray = [t for t in extra if t.startswith("-") or "=" not in t]
    if extra and not hasattr(args, "overrides"):
        stray = extra
    bare = [t for t in stray if not t.startswith("-")]
    if bare and hasattr(args, "overrides"):
        parser.error(f"{' '.join(bare)}: options are key=value (for example steps=100)")
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    tokens = list(getattr(args, "overrides", None) or [])
    if positional and tokens and "=" not in tokens[0]:
        tokens = tokens[1:]
    bare = [t for t in tokens if "=" not in t]
    if bare:
        parser.error(f"{' '.join(bare)}: options are key=value (for example steps=100)")
    if hasattr(args, "skip_corrupt"):
        _take_skip_corrupt(parser, args)
    return args


def _take_skip_corrupt(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``skip_corrupt=BOOL`` among the overrides is ``--skip-corrupt`` (the option every image
    loader takes, spelt as the error message of an unreadable image spells it)."""
    kept: list[str] = []
    given: list[str] = []
    for token in args.overrides or []:
        key = token.split("=", 1)[0].strip().replace("-", "_")
        (given if key == "skip_corrupt" else kept).append(token)
    if not given:
        return
    if len(given) > 1:
        parser.error(f"skip_corrupt is given twice ({' and '.join(given)}); keep one")
    text = given[0].split("=", 1)[1].strip().lower()
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        parser.error(f"{shown(given[0])} is not a boolean; use skip_corrupt=true or false")
    value = text in ("1", "true", "yes", "on")
    if args.skip_corrupt and not value:
        parser.error(f"--skip-corrupt and {given[0]} contradict each other; keep one")
    args.skip_corrupt, args.overrides = value, kept


def split_positional(tokens: Sequence[str]) -> tuple[str | None, list[str]]:
    """``["simclr", "steps=5"]`` -> ``("simclr", ["steps=5"])``: a leading token without ``=``
    is the verb's positional argument (a method name), the rest are overrides."""
    tokens = list(tokens or [])
    if tokens and "=" not in tokens[0]:
        return tokens[0], tokens[1:]
    return None, tokens


def refuse_multiprocess_launch(what: str) -> None:
    """Refuse a ``torchrun --nproc_per_node N`` launch (N > 1) of a command that runs in one
    process (``what`` names it): each process would do the whole job, into the same folder.

    The commands that train data-parallel (``python -m bmssl train`` of a method whose trainer
    splits its steps, ``python -m bissl run|baseline|pretext``) do not call this.
    """
    from bmssl.distributed import launched_world

    world = launched_world()
    if world > 1:
        from bmssl.errors import UserError

        raise UserError(
            f"launched as {world} processes (WORLD_SIZE={world}), but {what} runs in one "
            "process: each would do the whole job; run it without torchrun (or with "
            "--nproc_per_node 1)"
        )


def print_config(config: Any) -> None:
    """The resolved config as YAML on stdout (the ``print-config`` verb)."""
    sys.stdout.write(config_to_yaml(config))
