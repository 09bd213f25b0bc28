"""``python -m bmssl.data fetch NAME --root DIR [--quiet]`` and ``fetch --list``.

Downloads a dataset with a public source into ``DIR`` in the layout its loader reads (see
:mod:`bmssl.data.fetch`); ``--list`` prints every fetchable dataset, its URLs and pinned
checksums (torchvision's). Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bmssl.data import fetch as fetching
from bmssl.data import fetch_catalog
from bmssl.errors import UserError, check_positive, cli_entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bmssl.data", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download a dataset into a local root")
    fetch.add_argument("name", nargs="?", help="dataset name (see --list)")
    fetch.add_argument("--root", help="folder to download into (created when missing)")
    fetch.add_argument("--list", action="store_true", help="print every fetchable dataset")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    fetch.add_argument(
        "--timeout",
        type=float,
        default=fetching.DEFAULT_TIMEOUT,
        help="seconds to wait on the network (default %(default)s)",
    )
    return parser


def list_sources() -> str:
    """The ``--list`` text: each dataset, its file URLs and their pinned checksums."""
    lines = []
    for name, source in fetch_catalog.catalogue().items():
        note = f"  ({source.note})" if source.note else ""
        lines.append(f"{name}{note}")
        for remote in source.files:
            lines.append(f"  {remote.url}  {remote.algorithm}:{remote.checksum.lower()}")
    for name in fetch_catalog.NOT_FETCHABLE:
        lines.append(f"{name}  (not fetchable: no public source with a stable checksum)")
    return "\n".join(lines)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        if args.name:
            raise UserError("pass either a dataset name or --list, not both")
        print(list_sources())
        return 0
    if not args.name:
        raise UserError("name a dataset to fetch (python -m bmssl.data fetch --list shows them)")
    if args.name in fetch_catalog.NOT_FETCHABLE:
        raise UserError(fetch_catalog.NOT_FETCHABLE[args.name])
    if not args.root:
        raise UserError(f"pass --root DIR: the folder to download {args.name!r} into")
    check_positive("--timeout", args.timeout)
    fetching.fetch(args.name, args.root, quiet=args.quiet, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
