"""Atomic file writes that respect the umask, and output folders checked before any work.

A reader never sees a half-written file and a killed writer leaves the old file intact;
checkpoints and weights are in :mod:`bmssl.checkpoints`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.errors import (
    ENVIRONMENT_ERRNOS,
    UserError,
    describe_os_error,
)

__all__ = [
    "atomic_write",
    "current_umask",
    "ensure_writable_dir",
    "first_missing",
    "removed_on_failure",
    "removing",
    "write_json",
    "write_text",
]

# -- umask ------------------------------------------------------------------------------------

_UMASK_LOCK = threading.Lock()
_PROC_UMASK = re.compile(rb"^Umask:\s*([0-7]+)\s*$", re.MULTILINE)


def current_umask() -> int:
    """The process umask, read at each call so a program (or test) that changes it is followed.

    Linux reports it in ``/proc/self/status``, which reads it without changing it. Elsewhere the
    only way is to set and restore it; that is done under a lock and through the restrictive
    ``0o077``, so a file another thread creates in that instant is private rather than
    world-writable.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status", "rb") as status:
            found = _PROC_UMASK.search(status.read())
        if found:
            return int(found.group(1), 8)
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


# -- atomic writes ----------------------------------------------------------------------------


def _environment_oserror(exc: BaseException) -> OSError | None:
    """The disk-full / read-only / no-permission / not-a-folder OSError behind ``exc``, if any.

    ``torch.save`` reports a full disk as a ``RuntimeError`` raised while handling the
    ``OSError``; the cause is what the user needs to hear.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write a file through ``write(fileobj)`` into a temp file, then rename it over ``path``.

    A reader never sees a half-written file, and a killed writer (or a full disk) leaves the old
    file intact and no temp file behind. The file gets the mode a plain ``open()`` would give a
    new file (``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``, so collaborators on shared
    storage can read results. A full disk, read-only file system, missing permission or a parent
    that is a file is raised as an ``OSError`` that names ``path``, even when the writer (e.g.
    ``torch.save``) wrapped it in another exception, so ``cli_entry`` can print one line.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # Some network or FUSE file systems refuse chmod; the file then stays private, which
        # loses nothing.
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666 & ~current_umask())
        try:
            handle = os.fdopen(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = _environment_oserror(exc) if isinstance(exc, Exception) else None
        if cause is None:
            raise
        # Name the target, not the random temp name (mkdir errors keep the folder they name).
        filename = cause.filename
        temp_prefix = str(path.parent / f".{path.name}.")
        if filename is None or str(filename).startswith(temp_prefix):
            filename = str(path)
        if cause is exc and filename == cause.filename:
            raise
        raise OSError(cause.errno, cause.strerror, filename) from exc
    return path


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` hold the same bytes as ``source``: a hard link where the file system allows
    one (no second copy on disk), else a copy; either way atomically, as :func:`atomic_write`.

    Safe beside :func:`atomic_write`: a later write of ``source`` renames a new file over it and
    leaves the linked ``path`` pointing at the old bytes.
    """
    source, path = Path(source), Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        # Some file systems (FAT, some FUSE/object stores) have no hard links.
        def copy(out: Any) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out)

        return atomic_write(path, copy, mode="wb")
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def ensure_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) and check that files can be written there.

    Meant for CLIs to validate ``--out`` before doing any work. Raises a one-line
    :class:`UserError` when the folder cannot be created or written: read-only file system, no
    permission, a parent (or ``path`` itself) is a file, or the disk is full. ``option`` is the
    flag named in the message.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(
            f"{option} {str(path)!r} is a file, not a folder; choose another {option}"
        ) from None
    except OSError as err:
        message = describe_os_error(err, option)
        if message is None:
            raise
        raise UserError(message) from err
    try:
        # Creating the folder can succeed where writing cannot (an existing folder on a
        # read-only mount, a full disk), so write and sync one byte for real.
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as err:
        if err.filename is None or str(err.filename).startswith(str(path / ".write-test.")):
            err = OSError(err.errno, err.strerror, str(path))
        message = describe_os_error(err, option)
        if message is None:
            raise
        raise UserError(message) from err
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -- what a failed command created ----------------------------------------------------------


def first_missing(path: str | os.PathLike) -> Path | None:
    """The outermost folder of ``path`` (``path`` itself included) that does not exist yet:
    what creating ``path`` with its parents would add, so what a failure should take away.
    None when ``path`` exists already."""
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        return None
    top = path
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            break
        top = parent
    return top


@contextlib.contextmanager
def removed_on_failure(
    path: str | os.PathLike, keep: Callable[[], bool] = lambda: False
) -> Iterator[Path | None]:
    """Remove what the block created at ``path`` (the folder and any parents it made) when the
    block fails in any way (an error, Ctrl-C), unless ``keep()`` says the folder now holds
    something worth keeping (e.g. a checkpoint a rerun resumes from).

    Nothing that existed before the block is touched: when ``path`` already existed the block's
    own files stay, since they may sit among a previous run's. Yields the folder it would
    remove (None when ``path`` existed).
    """
    with removing(first_missing(path), keep) as top:
        yield top


@contextlib.contextmanager
def removing(top: Path | None, keep: Callable[[], bool] = lambda: False) -> Iterator[Path | None]:
    """Like :func:`removed_on_failure` for a folder ``top`` the caller knows it created (found
    with :func:`first_missing` before creating it); None removes nothing."""
    try:
        yield top
    except BaseException:
        if top is not None and top.exists() and not _kept(keep):
            shutil.rmtree(top, ignore_errors=True)
        raise


def _kept(keep: Callable[[], bool]) -> bool:
    """``keep()``, False when it cannot even look (a name too long, a folder unreadable)."""
    try:
        return bool(keep())
    except OSError:
        return False
