"""Download a dataset of :mod:`bmssl.data.fetch_catalog` into a root the loaders read.

The URLs and pinned checksums are torchvision's (read from its dataset classes at run time, see
the catalogue); nothing here retypes them. Safety, step by step:

1. each file is downloaded (urllib, with a timeout) into a hidden temporary file next to its
   destination, then verified — its size against ``Content-Length`` (and the catalogue's size
   when known), then its checksum — and only then renamed to its name;
2. an archive is extracted into a hidden temporary folder beside its destination, and its
   entries are renamed into place only once extraction is complete; the archive is then deleted;
3. the completion marker ``ROOT/.fetched-<name>.json`` (with the checksums) is written last.

So a failed, corrupt or interrupted download leaves no partial file and no marker, a checksum
mismatch is a :class:`UserError` naming the file and both digests, a network failure is a
one-line :class:`UserError`, and a rerun over a complete root (marker present, checksums equal
to the catalogue's, every expected path present) downloads nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bmssl.data import fetch_catalog
from bmssl.data.fetch_catalog import NOT_FETCHABLE, Remote, Source
from bmssl.errors import UserError
from bmssl.io import current_umask, ensure_writable_dir, write_json

__all__ = ["DEFAULT_TIMEOUT", "download", "fetch", "is_complete", "marker_path"]

DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def marker_path(root: Path, name: str) -> Path:
    return Path(root) / f".fetched-{name}.json"


def _network_error(url: str, reason: object, root: Path) -> UserError:
    return UserError(
        f"could not download {url}: {reason}; check the network or fetch it by hand into {root}"
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def download(
    remote: Remote,
    dest: Path,
    root: Path,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``remote.url`` to ``dest`` through a verified temporary file next to it."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666 & ~current_umask())
        digest = hashlib.new(remote.algorithm)
        received = 0
        expected: int | None = remote.size
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(remote.url, headers={"User-Agent": "bmssl-fetch"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except _NETWORK_ERRORS as err:
                raise _network_error(remote.url, _describe(err), root) from None
            with response:
                length = response.headers.get("Content-Length")
                if length is not None and length.strip().isdigit():
                    expected = int(length)
                with tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=quiet,
                    file=sys.stderr,
                ) as bar:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except _NETWORK_ERRORS as err:
                            raise _network_error(remote.url, _describe(err), root) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise _network_error(
                remote.url, f"transfer ended after {received} of {expected} bytes", root
            )
        if remote.size is not None and received != remote.size:
            raise UserError(
                f"size mismatch for {dest.name}: expected {remote.size} bytes, found {received}; "
                f"the file at {remote.url} changed or is corrupt; fetch it by hand into {root}"
            )
        found = digest.hexdigest()
        if found != remote.checksum.lower():
            raise UserError(
                f"checksum mismatch for {dest.name}: expected {remote.algorithm} "
                f"{remote.checksum.lower()}, found {found}; the file at {remote.url} changed or is "
                f"corrupt (nothing was kept); rerun, or fetch it by hand into {root}"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, merging folders (so two archives may fill one tree) and
    replacing what is in the way."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _place(child, dst / child.name)
        src.rmdir()
        return
    if dst.exists() or dst.is_symlink():
        _remove(dst)
    os.replace(src, dst)


def _unpack(remote: Remote, archive: Path, into: Path) -> None:
    """Extract ``archive`` into a temporary folder in ``into``, then rename its entries in."""
    if remote.extract == "gz":
        target = into / archive.name[: -len(".gz")]

        def copy(out: Any) -> None:
            with gzip.open(archive, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)

        from bmssl.io import atomic_write

        try:
            atomic_write(target, copy, mode="wb")
        except _ARCHIVE_ERRORS as err:
            raise UserError(
                f"could not decompress {str(archive)!r} ({err}); delete it and rerun"
            ) from None
        archive.unlink()
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=into))
    try:
        try:
            if remote.extract == "zip":
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging)
            else:
                with tarfile.open(archive, "r:*") as tf:
                    tf.extractall(staging, filter="data")
        except _ARCHIVE_ERRORS as err:
            raise UserError(
                f"could not extract {str(archive)!r} ({err}); delete it and rerun"
            ) from None
        for entry in sorted(staging.iterdir()):
            _place(entry, into / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()


def _clean_stale(folder: Path, filename: str) -> None:
    """Remove temporary files and folders a killed earlier run left for ``filename``."""
    if folder.is_dir():
        for stale in folder.glob(f".{filename}.*"):
            if stale.name.endswith((".part", ".extract", ".tmp")):
                _remove(stale)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _recorded(root: Path) -> dict[str, Any]:
    """Checksums recorded by every completion marker under ``root`` (any dataset's)."""
    found: dict[str, Any] = {}
    for marker in root.glob(".fetched-*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
            for entry in json.loads(marker.read_text())["files"]:
                found[str(entry["checksum"]).lower()] = entry
    return found


def _in_place(remote: Remote, root: Path) -> bool:
    return all((root / p).exists() for p in remote.produces)


def is_complete(source: Source, root: Path) -> bool:
    """True when ``root`` holds ``source``: its marker lists the catalogue's checksums and
    every expected path exists."""
    marker = marker_path(root, source.name)
    try:
        recorded = {str(e["checksum"]).lower() for e in json.loads(marker.read_text())["files"]}
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return all(f.checksum.lower() in recorded and _in_place(f, root) for f in source.files)


def resolve(name: str, sources: Mapping[str, Source]) -> Source:
    """The catalogue entry of ``name``, or a one-line :class:`UserError` saying how to get it."""
    if name in sources:
        return sources[name]
    if name in NOT_FETCHABLE:
        raise UserError(NOT_FETCHABLE[name])
    from bmssl.data.registry import how_to_get, list_datasets

    if name in list_datasets():
        how = " ".join(how_to_get(name).split()) or "see its loader's documentation"
        raise UserError(f"dataset {name!r} has no pinned public download here: {how}")
    raise UserError(
        f"unknown dataset {name!r}; fetchable: {', '.join(sorted(sources))} "
        f"(python -m bmssl.data fetch --list)"
    )


def fetch(
    name: str,
    root: str | os.PathLike,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    sources: Mapping[str, Source] | None = None,
) -> Path:
    """Fetch dataset ``name`` into ``root`` (see the module docstring); returns its marker path.

    A complete root is left as it is; a file another dataset's marker already records (CIFAR-FS
    and CIFAR-100 share one tarball) and whose paths exist is not downloaded again.
    """
    sources = fetch_catalog.catalogue() if sources is None else sources
    source = resolve(name, sources)
    root = ensure_writable_dir(Path(root).expanduser(), "--root")
    marker = marker_path(root, source.name)
    if is_complete(source, root):
        if not quiet:
            print(f"{source.name}: already complete in {root}, nothing downloaded")
        return marker
    recorded = _recorded(root)
    created: list[Path] = []  # folders this run made, removed again if it fails while empty
    try:
        for remote in source.files:
            if remote.checksum.lower() in recorded and _in_place(remote, root):
                continue
            into = root / remote.into if remote.into else root
            created += _missing_folders(into)
            into.mkdir(parents=True, exist_ok=True)
            _clean_stale(into, remote.filename)
            target = into / remote.filename
            download(remote, target, root, quiet=quiet, timeout=timeout)
            if remote.extract != "none":
                _unpack(remote, target, into)
            if not _in_place(remote, root):
                missing = next(p for p in remote.produces if not (root / p).exists())
                raise UserError(
                    f"{remote.filename} from {remote.url} did not produce {str(root / missing)!r}; "
                    f"its layout changed: fetch it by hand into {root}"
                )
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    files = [
        {
            "filename": f.filename,
            "url": f.url,
            "algorithm": f.algorithm,
            "checksum": f.checksum.lower(),
        }
        for f in source.files
    ]
    write_json(marker, {"dataset": source.name, "files": files})
    if not quiet:
        print(f"{source.name}: fetched into {root}")
    return marker
