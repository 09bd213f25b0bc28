"""The one command-line dialect of every entry point of the harness.

    python -m <tool> <verb> [--config FILE|PRESET] [--out DIR] [--quiet] [key=value ...]

``key=value`` overrides (dotted for sections: ``finetune.lr=0.01``) may stand anywhere after the
verb; ``--quiet`` is the one switch that silences progress bars and chatty logs; ``--help`` of a
verb lists every option of its config with type and default, generated from the dataclass.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmssl.config import config_to_yaml, options_help


def verb_parser(
    sub: Any,
    verb: str,
    help_text: str,
    *,
    config_cls: type | None = None,
    config: bool = True,
    out: str | None = "run directory",
    presets: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A sub-parser with the shared options; its epilog lists ``config_cls``'s options."""
    epilog = None
    if config_cls is not None:
        epilog = f"options (key=value) of {config_cls.__name__}:\n{options_help(config_cls)}"
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
        parser.add_argument("--out", type=Path, metavar="DIR", help=out)
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
    return args


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
