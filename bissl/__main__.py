"""Command line: ``python -m bissl run|baseline|pretext [--config FILE] [key=value ...]``.

- ``run``: SimCLR pre-training -> head warm-up -> BiSSL -> fine-tune; prints the metrics as JSON;
- ``baseline``: SimCLR pre-training -> fine-tune with the same fine-tuning budget;
- ``pretext``: only the SimCLR stage; writes an ``init_from`` file for BiSSL runs and searches.

Options come from :class:`bissl.trainer.BiSSLConfig` (``--config`` YAML, then ``key=value``
overrides, e.g. ``preset=paper-v2 lam=0.01 dataset=glyphs``). Outputs go to ``--out``
(default ``results/bissl/<dataset>/<command>/seed<seed>``); rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bmssl.config import load_config, parse_args_with_overrides
from bmssl.errors import cli_entry

COMMANDS = ("run", "baseline", "pretext")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bissl",
        description="BiSSL: bilevel alignment of SimCLR pre-training with a downstream task.",
        epilog="Options (key=value): any field of bissl.trainer.BiSSLConfig.",
    )
    parser.add_argument("command", choices=COMMANDS, help="which path to run")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--config", help="YAML file with BiSSLConfig fields")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bissl.trainer import BiSSLConfig

    args = parse_args_with_overrides(build_parser(), argv)
    config = load_config(BiSSLConfig, args.config, args.overrides)
    out = Path(args.out or f"results/bissl/{config.dataset}/{args.command}/seed{config.seed}")
    progress = not args.no_progress
    if args.command == "pretext":
        from bissl.pipeline import pretext_encoder

        _, path = pretext_encoder(config, None, out, progress)
        print(json.dumps({"init_from": str(path)}))
        return 0
    from bissl.pipeline import run_method

    metrics = run_method("bissl" if args.command == "run" else "baseline", config, out, progress)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
