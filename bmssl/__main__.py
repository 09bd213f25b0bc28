"""Command line: ``python -m bmssl train|eval``.

    python -m bmssl train --config reproduce/configs/bmssl_cpu.yaml --out runs/bmssl steps=500
    python -m bmssl eval --out runs/bmssl --split test --n-way 5 --k-shot 1

``train`` loads :class:`bmssl.meta.BMSSLConfig` from the YAML file, applies the trailing
``key=value`` overrides, writes ``<out>/config.yaml`` and trains, resuming from
``<out>/checkpoints/last.pt`` when it exists; the final metrics go to ``<out>/metrics.json``.
``eval`` rebuilds the encoder from a checkpoint and reports few-shot accuracy ± 95% CI of its
backbone on a split, written to ``<out>/eval/<split>_<N>way<K>shot_<classifier>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bmssl.config import parse_args_with_overrides
from bmssl.errors import UserError, cli_entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmssl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train an encoder with BMSSL")
    train.add_argument("--config", type=Path, help="YAML file of BMSSLConfig options")
    train.add_argument("--out", type=Path, help="run directory (checkpoints, history, config)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. steps=100")

    ev = sub.add_parser("eval", help="few-shot evaluation of a trained encoder")
    where = ev.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="run directory (uses checkpoints/last.pt)")
    where.add_argument("--checkpoint", type=Path, help="a checkpoint file written by train")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--n-way", type=int, default=5)
    ev.add_argument("--k-shot", type=int, default=1)
    ev.add_argument("--n-query", type=int, default=15)
    ev.add_argument("--episodes", type=int, default=2000)
    ev.add_argument("--classifier", default="proto", choices=("proto", "logreg", "finetune"))
    ev.add_argument("--seed", type=int, default=0, help="seed of the episode sampler")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _train(args: argparse.Namespace) -> dict:
    from bmssl.config import config_to_yaml, load_config
    from bmssl.io import write_json, write_text
    from bmssl.meta import BMSSLConfig, BMSSLTrainer

    config = load_config(BMSSLConfig, args.config, args.overrides)
    if args.out is not None:
        write_text(args.out / "config.yaml", config_to_yaml(config))
    trainer = BMSSLTrainer(config, args.out, progress=not args.no_progress)
    if trainer.checkpoint_path is not None and trainer.checkpoint_path.is_file():
        print(f"resuming from {trainer.checkpoint_path}", file=sys.stderr)
    metrics = trainer.fit()
    if args.out is not None:
        write_json(args.out / "metrics.json", metrics)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics


def _eval(args: argparse.Namespace) -> dict:
    from bmssl.baselines import encoder_for, load_split
    from bmssl.config import config_from_dict
    from bmssl.evaluate import evaluate_fewshot
    from bmssl.io import load_checkpoint, write_json
    from bmssl.meta import BMSSLConfig
    from bmssl.trainer import resolve_device

    path = args.checkpoint if args.checkpoint is not None else args.out / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; train first or pass --checkpoint PATH")
    state = load_checkpoint(path, restore_rng=False)
    if state.get("method") != "bmssl":
        raise UserError(f"{str(path)!r} was written by {state.get('method')!r}, not by bmssl")
    known = {f.name for f in dataclasses.fields(BMSSLConfig)}
    config = config_from_dict(
        BMSSLConfig, {k: v for k, v in state["trainer"]["config"].items() if k in known}
    )
    data = load_split(config, args.split)
    encoder = encoder_for(data, config)
    encoder.load_state_dict(state["trainer"]["encoder"])
    encoder.to(resolve_device(config.device))
    result = evaluate_fewshot(
        encoder.backbone,
        data,
        n_way=args.n_way,
        k_shot=args.k_shot,
        n_query=args.n_query,
        episodes=args.episodes,
        classifier=args.classifier,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = {
        "checkpoint": str(path),
        "step": int(state["step"]),
        "dataset": config.dataset,
        "split": args.split,
        "n_way": args.n_way,
        "k_shot": args.k_shot,
        "classifier": args.classifier,
        **result.as_dict(),
    }
    run_dir = args.out if args.out is not None else path.parent.parent
    name = f"{args.split}_{args.n_way}way{args.k_shot}shot_{args.classifier}.json"
    write_json(run_dir / "eval" / name, report)
    print(f"{config.dataset} {args.split} {args.n_way}-way {args.k_shot}-shot: {result} %")
    return report


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m bmssl`` and the ``bmssl`` script (returns None: exit code 0)."""
    args = parse_args_with_overrides(_parser(), argv)
    if args.command == "train":
        _train(args)
    else:
        _eval(args)


if __name__ == "__main__":
    main()
