"""Command line: ``python -m bissl run|baseline|pretext|print-config [--config FILE|PRESET]
[--out DIR] [--quiet] [key=value ...]``.

- ``run``: SimCLR pre-training -> head warm-up -> BiSSL -> fine-tune; prints the metrics as JSON;
- ``baseline``: SimCLR pre-training -> fine-tune with the same fine-tuning budget;
- ``pretext``: only the SimCLR stage; writes an ``init_from`` file for BiSSL runs and searches;
- ``print-config``: the resolved config as YAML.

Options come from :class:`bissl.config.BiSSLConfig`, one section per stage (``pretext.steps``,
``warmup.lr``, ``bilevel.lam``, ``cg.mode``, ``finetune.lr``): defaults < ``--config`` (a
preset: cpu, tiny, paper, paper-v1, paper-v2; or a YAML file) < ``key=value`` overrides.
Outputs go to ``--out`` (default ``results/bissl/<dataset>/<command>/seed<seed>``); rerunning
resumes. A new ``--out`` that fails before any stage saved a checkpoint is removed again;
``--skip-corrupt`` leaves undecodable image files out. ``torchrun --standalone --nproc_per_node N -m bissl run|baseline|pretext`` trains the
SimCLR and BiSSL stages data-parallel; rank 0 writes every file and fine-tunes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bmssl.cli import (
    Parser,
    parse_args,
    print_config,
    refuse_multiprocess_launch,
    skip_corrupt,
    verb_parser,
)
from bmssl.errors import cli_entry

COMMANDS = {
    "run": "SimCLR pretext -> head warm-up -> BiSSL -> fine-tune",
    "baseline": "SimCLR pretext -> fine-tune, the same fine-tuning budget",
    "pretext": "only the SimCLR pretext stage (writes an init_from file)",
    "print-config": "print the resolved config as YAML",
}


def build_parser() -> argparse.ArgumentParser:
    from bmssl.methods import get_method

    method = get_method("bissl")
    parser = Parser(
        prog="python -m bissl",
        description="BiSSL: bilevel alignment of SimCLR pre-training with a downstream task.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for verb, text in COMMANDS.items():
        verb_parser(
            sub,
            verb,
            text,
            config_cls=method.config_class(),
            defaults=method.load_config(),
            out=None if verb == "print-config" else "output directory",
            presets=tuple(method.presets),
            images=verb != "print-config",
        )
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    from bmssl.methods import get_method

    args = parse_args(build_parser(), argv)
    if args.command == "print-config":
        refuse_multiprocess_launch("`python -m bissl print-config`")
    config = get_method("bissl").load_config(args.config, args.overrides)
    if args.command == "print-config":
        print_config(config)
        return 0
    from bmssl.distributed import process_group
    from bmssl.io import removed_on_failure
    from bmssl.trainer import resolve_device

    out = Path(args.out or f"results/bissl/{config.dataset}/{args.command}/seed{config.seed}")
    # A new folder that fails before any stage checkpointed is removed; one with a checkpoint
    # stays, since rerunning resumes from it.
    with (
        skip_corrupt(args),
        process_group(resolve_device(config.device)),
        removed_on_failure(out, keep=lambda: any(out.rglob("*.pt"))),
    ):
        _run(args.command, config, out, not args.quiet)
    return 0


def _run(command: str, config, out: Path, progress: bool) -> None:
    from bmssl.distributed import is_main

    if command == "pretext":
        from bissl.pipeline import pretext_encoder

        _, path = pretext_encoder(config, None, out, progress)
        if is_main():
            print(json.dumps({"init_from": str(path)}))
        return
    from bissl.pipeline import run_method

    metrics = run_method("bissl" if command == "run" else "baseline", config, out, progress)
    if is_main():
        json.dump(metrics, sys.stdout, indent=2, sort_keys=True)
        print()


if __name__ == "__main__":
    raise SystemExit(main())
