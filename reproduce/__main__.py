"""Command line: ``python -m reproduce table1|bissl|crossdomain [--config PROFILE] [--out DIR]
[--quiet] [--data-dir DIR] [--download] [key=value ...]`` — the same as ``python
reproduce/table1.py``, ``reproduce/bissl_table.py`` and ``reproduce/crossdomain.py`` — and
``python -m reproduce claims [--profile P]``, the verdicts on the papers' claims; ``python -m
reproduce verify RESULTS_DIR [--cells K | --cell NAME]``, which retrains cells of a table and
compares them (:mod:`reproduce.verify`); ``python -m reproduce compare A B``, two results
folders of one table cell by cell, with their provenance differences (:mod:`reproduce.compare`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

TABLES = {
    "table1": "reproduce.table1",
    "bissl": "reproduce.bissl_table",
    "crossdomain": "reproduce.crossdomain",
    "claims": "reproduce.claims",
    "verify": "reproduce.verify",
    "compare": "reproduce.compare",
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TABLES:
        names = "|".join(TABLES)
        print(
            f"usage: python -m reproduce {{{names}}} [--config PROFILE] [--out DIR] [--quiet] "
            "[--data-dir DIR] [--download] [key=value ...]\n"
            "(python -m reproduce TABLE --help lists each table's options)",
            file=sys.stderr,
        )
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    import importlib

    importlib.import_module(TABLES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
