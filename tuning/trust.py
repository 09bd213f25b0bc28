"""Resume only a search whose Ray Tune state this user's harness wrote.

Ray Tune keeps a search's state as pickles: ``tuner.pkl``, the cloudpickled fields inside
``experiment_state-*.json``, the searcher's ``basic-variant-state-*.json``, callback states.
Unpickling runs whatever code a file names, so ``Tuner.restore`` on a folder someone else can
write (a shared ``/shared/tune``, a bucket) would run their code on this machine.

So the harness records the SHA-256 of each such *state file* at the moment it writes it, in a
record kept outside the search folder, in a place private to the user:

    $BMSSL_TRUST_DIR, else $XDG_STATE_HOME/bmssl-harness, else ~/.local/state/bmssl-harness
    └── trusted-searches/<sha256 of the search's path or URI>.json   {"files": {name: [digests]}}

``tuner.pkl`` is signed right after Tune writes it; the experiment and searcher state each time
Tune saves them, before they are uploaded to the storage (:func:`signing` wraps Tune's save).
The last :data:`KEEP` digests of each file are kept, so a driver killed between a save and its
upload still resumes from the previous, recorded copy.

Before ``Tuner.restore``, :func:`verify` reads every state file of the search folder (without
unpickling it) and refuses, with one :class:`~bmssl.errors.UserError` line (exit 2), when one
is not recorded: the search was started by another user, on another machine (another home), by
an older harness, or the file was altered or added since. The record folder itself must be a
folder of this user that no one else may write; otherwise it is not trusted either.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bmssl.errors import UserError, shown
from bmssl.io import atomic_write
from tuning.storage import Location

__all__ = ["STATE_PATTERNS", "TRUST_DIR_ENV", "record_path", "sign", "signing", "verify"]

TRUST_DIR_ENV = "BMSSL_TRUST_DIR"
#: top-level files of a search folder that Tune unpickles on restore (or may: any ``*.pkl``)
STATE_PATTERNS = (
    "tuner.pkl",
    "experiment_state-*.json",
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "callback-states-*.pkl",
    "*.pkl",
)
#: digests remembered per file name (Tune rewrites a session's state file many times)
KEEP = 16
_CHUNK = 1 << 20


def _state_root() -> Path:
    explicit = os.environ.get(TRUST_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "bmssl-harness"


def _private_dir() -> Path:
    """``<state root>/trusted-searches``, created 0700; refused unless this user's and writable
    by no one else (a record others could write proves nothing)."""
    folder = _state_root() / "trusted-searches"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (folder, folder.parent):
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UserError(
                f"the record of trusted searches {shown(str(path), 200)} belongs to another user "
                f"or others may write it; make it yours and private (chmod 700), or point "
                f"{TRUST_DIR_ENV} at a private folder"
            )
    return folder


def record_path(experiment: Location) -> Path:
    """The record of ``experiment``'s state files (whether it exists or not)."""
    # A local search is known by its path, so --out DIR and --out file://DIR share one record.
    where = str(experiment.local) if experiment.local is not None else experiment.uri
    key = hashlib.sha256(where.rstrip("/").encode()).hexdigest()[:40]
    return _private_dir() / f"{key}.json"


def _read_record(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): [str(d) for d in v] for k, v in files.items() if isinstance(v, list)}


def _is_state_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in STATE_PATTERNS)


def _digest(stream: Any) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sign(experiment: Location, digests: dict[str, str]) -> None:
    """Add ``{file name: sha256}`` of state files this process wrote to ``experiment``'s record."""
    if not digests:
        return
    path = record_path(experiment)
    files = _read_record(path)
    for name, digest in digests.items():
        kept = [d for d in files.get(name, []) if d != digest]
        files[name] = (kept + [digest])[-KEEP:]
    text = json.dumps({"experiment": experiment.uri, "files": files}, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text))


def digests_of_folder(folder: Path) -> dict[str, str]:
    """``{name: sha256}`` of the state files directly in the local ``folder``."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.is_file() and _is_state_file(entry.name):
                with open(entry.path, "rb") as stream:
                    out[entry.name] = _digest(stream)
    return out


def sign_stored(experiment: Location, names: Iterable[str]) -> None:
    """Sign files ``names`` as they are now in ``experiment`` (``tuner.pkl``, which Tune writes
    straight to the storage when the Tuner is made)."""
    digests = {}
    for name in names:
        with experiment.fs.open_input_stream(f"{experiment.path}/{name}") as stream:
            digests[name] = _digest(stream)
    sign(experiment, digests)


@contextlib.contextmanager
def signing(experiment: Location) -> Iterator[None]:
    """While the block runs, every experiment-state save of Tune in this process signs the
    saved files (in the driver's staging folder, before Tune uploads them to ``experiment``)."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.save_to_dir

    def save_to_dir(controller: Any) -> None:
        original(controller)
        storage = getattr(controller, "_storage", None)
        staging = getattr(storage, "experiment_driver_staging_path", None)
        try:
            if staging is not None:  # else nothing is signed, and a resume is refused: safe
                sign(experiment, digests_of_folder(Path(staging)))
        except (OSError, UserError) as err:
            # The search goes on; only a later --resume of it will be refused.
            print(f"tuning: warning: cannot record the Tune state ({err})", file=sys.stderr)

    TuneController.save_to_dir = save_to_dir  # type: ignore[method-assign]
    try:
        yield
    finally:
        TuneController.save_to_dir = original  # type: ignore[method-assign]


def verify(experiment: Location, name: str) -> None:
    """Refuse (:class:`UserError`) to resume search ``name`` at ``experiment`` unless each of its
    state files matches a digest this user's harness recorded; reads, never unpickles."""
    from pyarrow import fs as pafs

    record = record_path(experiment)
    files = _read_record(record)
    listed = experiment.fs.get_file_info(pafs.FileSelector(experiment.path, recursive=False))
    states = sorted(
        info.base_name
        for info in listed
        if info.type == pafs.FileType.File and _is_state_file(info.base_name)
    )
    why = ", so loading them would run any code they hold"
    if not files:
        raise UserError(
            f"refusing to resume search {name!r}: this account has no record of writing its "
            f"Tune state ({', '.join(states[:3]) or 'tuner.pkl'}): it was started by another "
            "user, on another machine or by an older version of the harness; Tune's state files "
            f"are pickles{why}. Start a new search instead (--name or another --out)"
        )
    for state in states:
        with experiment.fs.open_input_stream(f"{experiment.path}/{state}") as stream:
            digest = _digest(stream)
        if digest not in files.get(state, []):
            change = "was added" if state not in files else "changed"
            raise UserError(
                f"refusing to resume search {name!r}: {state} {change} since this harness "
                f"wrote the search (its SHA-256 is not in {str(record)!r}); Tune's state files "
                f"are pickles{why}. Start a new search instead (--name or another --out)"
            )
