"""Where a search lives: a local directory or a URI that Ray's ``storage_path`` accepts.

``--out`` takes a path (a local disk, or on a cluster a mount every node shares) or a URI
(``file:///shared/tune``, ``s3://bucket/tune``, ``gs://...``, ...). Ray gets it unchanged; the
harness's own files (``tuning_spec.json`` and ``report/``) go through the same pyarrow file
system, so they sit beside Tune's state whichever the storage is. Local files are written
atomically (:mod:`bmssl.io`); remote ones are uploaded whole (object stores have no partial
files).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bmssl.errors import UserError
from bmssl.io import ensure_writable_dir, write_text

#: URI schemes that pyarrow (hence Ray Tune) can open
URI_SCHEMES = ("file", "local", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


def check_storage(text: str, option: str = "--out") -> None:
    """Refuse an unusable storage text without touching any file system or the network."""
    if not text.strip():
        raise UserError(f"{option} is empty; pass a directory or a storage URI")
    if "://" not in text:
        return
    scheme = urlparse(text).scheme.lower()
    if scheme not in URI_SCHEMES:
        raise UserError(
            f"{option} {text!r} is a URI with scheme {scheme!r}, which Ray Tune cannot store to; "
            f"use a directory or a URI of: {', '.join(s + '://' for s in URI_SCHEMES)}"
        )
    parsed = urlparse(text)
    if scheme in ("file", "local") and (parsed.netloc not in ("", "localhost") or not parsed.path):
        raise UserError(f"{option} {text!r} needs an absolute path: file:///abs/path")


@dataclass(frozen=True)
class Location:
    """A directory: ``uri`` is what Ray gets, ``fs``/``path`` where pyarrow finds it."""

    uri: str
    fs: Any
    path: str

    @property
    def local(self) -> Path | None:
        """The directory on this machine when the file system is local, else None."""
        from pyarrow import fs as pafs

        return Path(self.path) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def child(self, *names: str) -> Location:
        suffix = "/".join(names)
        return Location(
            f"{self.uri.rstrip('/')}/{suffix}", self.fs, f"{self.path.rstrip('/')}/{suffix}"
        )

    def is_file(self, name: str) -> bool:
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(f"{self.path}/{name}")
        return bool(info.type == pafs.FileType.File)

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(f"{self.path}/{name}") as stream:
            return bytes(stream.read()).decode()

    def write_text(self, name: str, text: str) -> None:
        local = self.local
        if local is not None:
            write_text(local / name, text)
            return
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as stream:
            stream.write(text.encode())

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A local directory whose files end up in this location (directly when it is local;
        uploaded when the block ends otherwise)."""
        local = self.local
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            yield local
            return
        staging = Path(tempfile.mkdtemp(prefix="tuning-report-"))
        try:
            yield staging
            from pyarrow import fs as pafs

            self.fs.create_dir(self.path, recursive=True)
            pafs.copy_files(str(staging), self.path, destination_filesystem=self.fs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def display(self, name: str = "") -> str:
        """``uri/name`` for messages (a plain path for local directories)."""
        return f"{self.uri}/{name}" if name else self.uri


def resolve_storage(text: str, option: str = "--out") -> Location:
    """The :class:`Location` of ``text`` (checked with :func:`check_storage`); a local directory
    is made absolute, created and probed for writing (exit 2 with one line when it cannot be)."""
    check_storage(text, option)
    from pyarrow import fs as pafs

    if "://" not in text:
        path = ensure_writable_dir(Path(text).expanduser().resolve(), option)
        return Location(str(path), pafs.LocalFileSystem(), str(path))
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"{option} {text!r} cannot be opened: {err}") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        ensure_writable_dir(path, option)
    return Location(text.rstrip("/"), filesystem, path.rstrip("/"))


def location_of(text: str | Path) -> Location:
    """An existing directory given as a path or URI (no writability check: for reading)."""
    text = str(text)
    from pyarrow import fs as pafs

    if "://" not in text:
        path = str(Path(text).expanduser().resolve())
        return Location(path, pafs.LocalFileSystem(), path)
    check_storage(text, "directory")
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"{text!r} cannot be opened: {err}") from None
    return Location(text.rstrip("/"), filesystem, path.rstrip("/"))


def text_reader(location: Location) -> Callable[[str], str | None]:
    """``read(relative_path) -> text or None`` inside ``location`` (for Tune's result files)."""

    def read(name: str) -> str | None:
        try:
            return location.read_text(name) if location.is_file(name) else None
        except OSError:
            return None

    return read
