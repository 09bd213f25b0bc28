"""An advisory lock on an output folder, so that two processes cannot train into one ``--out``.

``RunLock`` takes ``fcntl.flock`` on ``<directory>/.lock``. The kernel drops the lock when the
holder exits in any way (SIGKILL included), so a crashed run never leaves a stale lock behind,
and the lock file is never deleted (deleting it would let a third process lock a fresh inode while
a second still waits on the old one). The file holds the holder's PID and command line, for the
message the next process prints.

Forked children inherit the lock (it belongs to the open file, which ``fork`` shares), so a
worker that outlives its parent keeps the folder locked until it exits too.

Usage::

    with RunLock(args.out):
        trainer.fit()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
from pathlib import Path
from types import TracebackType

from bmssl.errors import UserError
from bmssl.io import ensure_writable_dir

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".lock"


def _command_line() -> str:
    """This process's command line on one line, as the user would have typed it."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    return " ".join(shlex.quote(part) for part in argv).replace("\n", " ")


class RunLock:
    """Exclusive advisory lock on ``directory`` (created if needed), held while in ``with``.

    ``wait=False`` (the default) raises a :class:`UserError` at once when another process holds
    the lock, naming its PID and command line; ``wait=True`` blocks until it is free. ``what``
    says what the folder is used for (written into the lock file and the message), ``option``
    the flag the user should change.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        what: str = "run",
        wait: bool = False,
        option: str = "--out",
    ) -> None:
        self.directory = Path(directory)
        self.what = what
        self.wait = wait
        self.option = option
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._writable = False

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def _note(self) -> list[str]:
        """Lines of the lock file: PID, command line, what (empty when unknown)."""
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return lines if lines and lines[0].strip().isdigit() else []

    def holder(self) -> str:
        """``"pid N: command"`` of the last process that took the lock, or ``""`` when unknown."""
        lines = self._note()
        if not lines:
            return ""
        command = lines[1] if len(lines) > 1 else "?"
        if len(command) > 200:
            command = command[:197] + "..."
        return f"pid {lines[0].strip()}: {command}"

    def acquire(self) -> RunLock:
        """Take the lock (see the class docstring); returns ``self``."""
        if self._fd is not None:
            raise RuntimeError(f"RunLock on {self.directory} is already held by this object")
        ensure_writable_dir(self.directory, self.option)
        # O_CLOEXEC (Python's default) keeps exec'd children from inheriting the lock.
        try:
            fd, writable = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), True
        except PermissionError:
            # A collaborator's lock file in a shared group folder may be read-only for us;
            # flock works on a read-only descriptor, only the note cannot be written.
            fd, writable = os.open(self.path, os.O_RDONLY), False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = self.holder()
                who = f"another process ({holder})" if holder else "another process"
                if holder.startswith(f"pid {os.getpid()}:"):
                    who = "this same process (a second RunLock)"
                note = self._note()
                what = note[2] if len(note) > 2 and note[2] else self.what  # the holder's use
                raise UserError(
                    f"{who} is using {str(self.directory)!r} for a {what}; wait for it to "
                    f"finish or choose another {self.option}"
                ) from None
            if writable:
                # Holding the lock, so no other writer: replace the previous holder's note.
                os.ftruncate(fd, 0)
                mine = f"{os.getpid()}\n{_command_line()}\n{self.what}\n".encode()
                os.pwrite(fd, mine, 0)
        except BaseException:
            os.close(fd)  # closing also releases a lock taken above
            raise
        self._fd, self._writable = fd, writable
        return self

    def release(self) -> None:
        """Drop the lock (the file stays); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._writable:
                os.ftruncate(fd, 0)  # a stale note would name a process that is gone
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        # A lock object dropped without release() must not keep the descriptor open forever.
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(Exception):  # os may be half torn down at interpreter exit
                self.release()
