"""Command line: ``python -m bmssl methods|train|eval|export|print-config``.

    python -m bmssl methods
    python -m bmssl train bmssl --config cpu --out runs/bmssl steps=500
    python -m bmssl train simclr --config cpu --out runs/simclr
    python -m bmssl print-config meta-ssl --config cpu
    python -m bmssl eval --out runs/bmssl split=test n_way=5 k_shot=1
    python -m bmssl export --out runs/bmssl            # runs/bmssl/backbone.pt (a state_dict)

``train METHOD`` (default ``bmssl``) builds the method's config (defaults < ``--config`` preset
or YAML file < ``key=value`` overrides), checks it and its data, writes ``<out>/config.yaml``
and trains, resuming from ``<out>/checkpoints/last.pt`` when it exists. Under
``torchrun --standalone --nproc_per_node N -m bmssl train ...`` the processes split each step of
a data-parallel method (simclr, bmssl, meta-ssl, bmssl-fo) and only rank 0 writes. ``eval``
rebuilds the backbone of any registered method's checkpoint and reports few-shot accuracy ±
95% CI on a split, written to ``<out>/eval/<split>_<N>way<K>shot_<classifier>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
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
    split_positional,
    verb_parser,
)
from bmssl.errors import UserError, cli_entry, shown

DEFAULT_METHOD = "bmssl"


def _parser(method: str | None) -> argparse.ArgumentParser:
    from bmssl.evaluate import EvalConfig
    from bmssl.methods import get_method, list_methods

    parser = Parser(prog="python -m bmssl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the registered methods")
    names = ", ".join(m.name for m in list_methods())
    listed = get_method(method or DEFAULT_METHOD)
    for verb, text in (
        ("train", f"train METHOD (one of: {names}; default {DEFAULT_METHOD})"),
        ("print-config", "print the resolved config of METHOD as YAML"),
    ):
        verb_parser(
            sub,
            verb,
            text,
            config_cls=listed.config_class(),
            defaults=listed.load_config(),
            out="run directory (checkpoints, history, config)" if verb == "train" else None,
            presets=tuple(listed.presets),
            images=verb == "train",
        )
    ev = verb_parser(
        sub,
        "eval",
        "few-shot evaluation of a trained encoder's backbone",
        config_cls=EvalConfig,
        config=False,
        out="run directory (uses checkpoints/last.pt)",
        images=True,
    )
    ev.add_argument("--checkpoint", type=Path, help="a checkpoint file written by train")
    ex = verb_parser(
        sub,
        "export",
        "write the backbone of a run as a plain state_dict (torch.load(..., weights_only=True))",
        config=False,
        out="run directory (uses checkpoints/last.pt)",
    )
    ex.add_argument("--checkpoint", type=Path, help="a checkpoint file written by train")
    ex.add_argument("--to", metavar="FILE", help="output file (default <run>/backbone.pt)")
    return parser


def _method_and_config(args: argparse.Namespace):
    from bmssl.methods import get_method

    name, overrides = split_positional(args.overrides)
    method = get_method(name or DEFAULT_METHOD)
    return method, method.load_config(args.config, overrides)


def _data_parallel_methods() -> list[str]:
    from bmssl.methods import list_methods

    return [
        m.name
        for m in list_methods()
        if m.trainer is not None and getattr(m.trainer_class(), "data_parallel", False)
    ]


def _train(args: argparse.Namespace) -> dict:
    from bmssl.distributed import launched_world, process_group
    from bmssl.trainer import resolve_device

    method, config = _method_and_config(args)
    if method.kind != "trainer":
        raise UserError(
            f"method {method.name!r} is not trained by a trainer ({method.kind}); evaluate it "
            "with reproduce/table1.py"
        )
    trainer_cls = method.trainer_class()
    world = launched_world()
    if world > 1 and not getattr(trainer_cls, "data_parallel", False):
        raise UserError(
            f"method {method.name!r} trains in one process, but torchrun launched {world}; run "
            f"it without torchrun, or train one of {', '.join(_data_parallel_methods())} with it"
        )
    with process_group(resolve_device(str(getattr(config, "device", "cpu")))):
        return _train_in_group(args, method, config, trainer_cls)


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or the only process."""
    from bmssl.distributed import is_main

    return bool(is_main())


def _train_in_group(args: argparse.Namespace, method, config, trainer_cls) -> dict:
    """``train`` in this process (rank r of a torchrun group, or alone); rank 0 writes.

    A new run that fails in any way (a corrupt image, a diverging loss, a full disk, Ctrl-C)
    before its first checkpoint leaves nothing behind: no half-made run folder to mistake for a
    run. Once a checkpoint exists the folder stays, since rerunning resumes from it.
    """
    from bmssl.io import removed_on_failure

    out = args.out
    writes = out is not None and is_main_process()
    guard = (
        removed_on_failure(out, keep=lambda: any((out / "checkpoints").glob("*.pt")))
        if writes
        else contextlib.nullcontext()
    )
    with guard:
        return _train_and_record(args, method, config, trainer_cls)


def _train_and_record(args: argparse.Namespace, method, config, trainer_cls) -> dict:
    from bmssl.config import config_to_yaml
    from bmssl.io import write_json, write_text

    # checks settings and data; a trainer may build from the config alone (BiSSL's does)
    trainer = method.build_trainer(config, args.out, progress=not args.quiet)
    main = trainer.is_main
    if args.out is not None and main:
        from bmssl.io import ensure_writable_dir
        from bmssl.runlock import RunLock

        ensure_writable_dir(args.out)
        with RunLock(args.out, what=f"{method.name} run"):
            if trainer.maybe_resume():  # a refused resume leaves the folder as it was
                print(f"resuming from {trainer.checkpoint_path}", file=sys.stderr)
            write_text(args.out / "config.yaml", config_to_yaml(config))
    metrics = trainer.fit()  # the other ranks resume from rank 0's last.pt in here
    if main:
        if args.out is not None:
            write_json(args.out / "metrics.json", metrics)
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics


def _checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint is None and args.out is None:
        raise UserError("pass --out RUN_DIR (uses its checkpoints/last.pt) or --checkpoint FILE")
    path = args.checkpoint if args.checkpoint is not None else args.out / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; train first or pass --checkpoint PATH")
    return path


def _eval(args: argparse.Namespace) -> dict:
    from bmssl.config import load_config
    from bmssl.evaluate import EvalConfig, evaluate_fewshot
    from bmssl.io import removed_on_failure, write_json
    from bmssl.pretrain import load_split
    from bmssl.trainer import load_trained

    settings = load_config(EvalConfig, None, args.overrides)
    path = _checkpoint_path(args)
    trained = load_trained(path)
    config = trained.config
    data = load_split(config, settings.split)
    result = evaluate_fewshot(
        trained.backbone,
        data,
        n_way=settings.n_way,
        k_shot=settings.k_shot,
        n_query=settings.n_query,
        episodes=settings.episodes,
        classifier=settings.classifier,
        seed=settings.seed,
        progress=not args.quiet,
    )
    report = {
        "checkpoint": str(path),
        "method": trained.method,
        "step": trained.step,
        "dataset": config.dataset,
        "split": settings.split,
        "n_way": settings.n_way,
        "k_shot": settings.k_shot,
        "classifier": settings.classifier,
        **result.as_dict(),
    }
    run_dir = args.out if args.out is not None else path.parent.parent
    name = f"{settings.split}_{settings.n_way}way{settings.k_shot}shot_{settings.classifier}.json"
    with removed_on_failure(run_dir / "eval"):  # a full disk leaves no empty eval/ behind
        write_json(run_dir / "eval" / name, report)
    print(
        f"{config.dataset} {settings.split} {settings.n_way}-way {settings.k_shot}-shot: {result} %"
    )
    return report


def _export(args: argparse.Namespace) -> Path:
    from bmssl.checkpoints import save_weights
    from bmssl.io import removed_on_failure
    from bmssl.trainer import load_trained

    if args.overrides:
        raise UserError(f"export takes no options; got {shown(' '.join(args.overrides))}")
    target = _export_target(args)
    path = _checkpoint_path(args)
    trained = load_trained(path)
    if target is None:
        target = path.parent.parent / "backbone.pt"
    # The file is replaced atomically, so an interrupted export keeps the previous one; the
    # folders it had to create go again.
    with removed_on_failure(target.parent):
        save_weights(target, trained.backbone.state_dict())
    print(f"wrote the {trained.method} backbone (step {trained.step}) to {target}")
    return target


def _export_target(args: argparse.Namespace) -> Path | None:
    """``--to`` checked before anything is read or written (None: the default)."""
    if args.to is None:
        return None
    if not args.to.strip():
        raise UserError("--to is empty; pass the file to write (for example --to backbone.pt)")
    target = Path(args.to)
    if target.is_dir():
        raise UserError(
            f"--to {shown(str(target), 200)} is a folder; pass a file name, for example "
            f"--to {target / 'backbone.pt'}"
        )
    return target


def _first_word(tokens: list[str]) -> str | None:
    """The first bare word of ``tokens`` that is not the value of an option (the method)."""
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = "=" not in token and token not in ("--quiet", "--skip-corrupt", "-h", "--help")
        elif "=" not in token:
            return token
    return None


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bmssl`` and the ``bmssl`` script (returns None: exit code 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    method = None
    if len(argv) > 1 and argv[0] in ("train", "print-config"):
        method = _first_word(argv[1:])
    args = parse_args(_parser(method), argv, positional=True)
    if args.command != "train":  # train splits its steps across torchrun's processes
        refuse_multiprocess_launch(f"`python -m bmssl {args.command}`")
    with skip_corrupt(args):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    """The verb ``args.command``."""
    if args.command == "methods":
        from bmssl.methods import list_methods

        for m in list_methods():
            presets = ", ".join(m.presets) or "-"
            print(f"{m.name:<16} {m.description} [presets: {presets}]")
    elif args.command == "train":
        _train(args)
    elif args.command == "print-config":
        print_config(_method_and_config(args)[1])
    elif args.command == "eval":
        _eval(args)
    else:
        _export(args)


if __name__ == "__main__":
    main()
