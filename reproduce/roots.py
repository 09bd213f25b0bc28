"""Where a table reads each dataset from: ``--data-root``, ``--data-dir``, ``--download``, or
the synthetic copies of a paper-smoke profile.

Precedence: ``--data-root NAME=PATH`` names a dataset's root; every other dataset of the run is
read from ``--data-dir DIR`` as ``DIR/<name>``. With ``--download`` every root the loader does not
accept yet is fetched (:func:`bmssl.data.fetch.fetch`: verified, atomic, a complete root is left
alone) before anything trains; a dataset without a public source whose root is missing stops the
command first, with the text that says how to obtain it, so nothing is downloaded in vain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bmssl.errors import DataNotFoundError, UserError
from reproduce.tables import parse_key_values

#: ``probe(name, root)`` raises :class:`DataNotFoundError` when the loader cannot read ``root``
Probe = Callable[[str, str], None]


def _accepted(probe: Probe, name: str, root: str) -> bool:
    try:
        probe(name, root)
    except DataNotFoundError:
        return False
    return True


def _no_source_message(name: str, root: str) -> str:
    from bmssl.data import fetch_catalog
    from bmssl.data.registry import how_to_get

    how = fetch_catalog.NOT_FETCHABLE.get(name) or " ".join(how_to_get(name).split())
    return (
        f"--download cannot fetch {name!r} (no public source with a pinned checksum) and its root "
        f"{root!r} is missing or incomplete: {how}"
    )


def download_missing(
    roots: Mapping[str, str], datasets: Sequence[str], probe: Probe, quiet: bool = False
) -> list[str]:
    """Fetch every dataset of ``datasets`` whose root the loader does not accept; returns the
    names fetched. Every dataset is checked before the first byte is downloaded."""
    from bmssl.data import fetch as fetching
    from bmssl.data import fetch_catalog

    sources = fetch_catalog.catalogue()
    missing = [d for d in datasets if d not in roots]
    if missing:
        raise UserError(
            f"--download needs a root for {', '.join(missing)}: pass --data-dir DIR "
            f"(each dataset in DIR/<name>) or --data-root {missing[0]}=PATH"
        )
    todo = []
    for name in datasets:
        complete = name in sources and fetching.is_complete(sources[name], Path(roots[name]))
        if complete or (Path(roots[name]).exists() and _accepted(probe, name, roots[name])):
            continue
        if name not in sources:
            raise UserError(_no_source_message(name, roots[name]))
        todo.append(name)
    for name in todo:
        fetching.fetch(name, roots[name], quiet=quiet, sources=sources)
    return todo


def resolve_roots(
    given: Sequence[str],
    data_dir: str | None,
    datasets: Sequence[str],
    *,
    download: bool = False,
    probe: Probe | None = None,
    synthetic: Path | None = None,
    synthetic_options: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, str]:
    """Each dataset's root (absent: the loader's own default, e.g. none for offline sets).

    ``synthetic``: the cache folder of a paper-smoke profile, where a synthetic copy of every
    dataset without a ``--data-root`` is built (``synthetic_options[name]``: its builder's
    options). ``download`` fetches missing roots (``probe`` tells a usable root).
    """
    roots = parse_key_values(given, "--data-root")
    if synthetic is not None:
        if download or data_dir:
            flag = "--download" if download else "--data-dir"
            raise UserError(
                f"{flag} is for real data; this profile builds its own synthetic copies (drop "
                f"{flag}, or use the paper profile: --config paper)"
            )
        from reproduce.smoke_data import ensure_root

        for name in datasets:
            if name not in roots:
                options = (synthetic_options or {}).get(name)
                roots[name] = str(ensure_root(name, synthetic, options))
        return roots
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        if base.exists() and not base.is_dir():
            raise UserError(f"--data-dir {data_dir!r} is a file; pass a folder")
        for name in datasets:
            roots.setdefault(name, str(base / name))
    if download:
        assert probe is not None, "download needs a probe"
        download_missing(roots, datasets, probe, quiet)
    return roots
