"""Fingerprints of the datasets a result read, and their on-disk cache.

:func:`fingerprint_datasets` hashes each dataset's bytes for the provenance record
(:mod:`bmssl.provenance`): the files under its root, or the images an offline set (digits,
glyphs) generates. Hashing a large set is done once per machine: the result is cached in
``fingerprints.json`` under ``$BMSSL_CACHE_DIR`` (default ``~/.cache/bmssl``), keyed by the path
and the size and modification time of every file under it (for a generated set: its options and
the code and library versions that generate it). ``BMSSL_FINGERPRINT_DATA=0`` skips the bytes.
:func:`dataset_refs` finds the datasets named in configs, jobs and evaluations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: offline sets whose images are generated in memory (fingerprinted by those bytes)
GENERATED_SETS = ("digits", "glyphs")
#: environment switch: ``0`` records the datasets without hashing their bytes
FINGERPRINT_ENV = "BMSSL_FINGERPRINT_DATA"
CACHE_ENV = "BMSSL_CACHE_DIR"
CACHE_FILE = "fingerprints.json"
_CHUNK = 1 << 20
#: the folders this process has fingerprinted (a dataset does not change under a running job)
_SEEN: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class DataRef:
    """One dataset a result read: its name, local root, image size and options."""

    name: str
    root: str | None = None
    image_size: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """How the record names it: ``digits 28px`` (generated; with its options, such as
        ``glyphs 28px (num_classes=5)``), ``name=root`` or ``name``."""
        if self.root is None and self.name in GENERATED_SETS:
            options = "".join(f", {k}={v}" for k, v in self.options)
            return f"{self.name} {self.image_size or 28}px" + (
                f" ({options[2:]})" if options else ""
            )
        return self.name if self.root is None else f"{self.name}={self.root}"


def dataset_refs(*objects: Any) -> list[DataRef]:
    """Every dataset named in ``objects`` (configs, jobs, evaluations; dataclasses searched
    recursively): a dataclass with a string ``dataset`` (or ``name``) and a ``data_root`` (or
    ``root``) field is one."""
    found: dict[str, DataRef] = {}

    def visit(obj: Any) -> None:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            names = {f.name for f in dataclasses.fields(obj)}
            root_field = next((n for n in ("data_root", "root") if n in names), None)
            if "dataset" in names and root_field and isinstance(obj.dataset, str):  # type: ignore[attr-defined]
                root = getattr(obj, root_field)
                options = getattr(obj, "dataset_options", None) or dict(
                    getattr(obj, "options", ()) or ()
                )
                size = getattr(obj, "image_size", None)
                ref = DataRef(
                    obj.dataset,  # type: ignore[attr-defined]
                    None if root is None else str(root),
                    int(size) if isinstance(size, int) else None,
                    tuple(sorted((str(k), v) for k, v in dict(options).items())),
                )
                found.setdefault(ref.key, ref)
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name))
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)

    for obj in objects:
        visit(obj)
    return [found[k] for k in sorted(found)]


def cache_dir() -> Path:
    """``$BMSSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/bmssl``, else ``~/.cache/bmssl``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "bmssl"


class FingerprintCache:
    """``fingerprints.json`` in a folder: key -> entry, read once, merged and written atomically
    (two processes writing at once lose at most an entry, which is computed again)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.path = (Path(directory) if directory is not None else cache_dir()) / CACHE_FILE
        self.entries: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, signature: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("signature") == signature:
            return entry
        return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        from bmssl.io import write_json

        self.entries = {**self._read(), key: entry}
        with contextlib.suppress(OSError):  # an unwritable cache only costs a later rehash
            write_json(self.path, self.entries)


def _files_under(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.name, path)]
    out = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder) / name
            out.append((full.relative_to(path).as_posix(), full))
    return out


def fingerprint_path(path: str | Path, cache: FingerprintCache | None = None) -> dict[str, Any]:
    """The bytes of a file or of every file under a folder: ``sha256`` over each file's
    relative path and content hash, with ``files`` and ``bytes``. Cached under the absolute
    path with a signature of every file's path, size and modification time."""
    path = Path(path).expanduser().resolve()
    if str(path) in _SEEN:  # walked once per process: a large tree is not listed at every run
        return dict(_SEEN[str(path)])
    listing = []
    for rel, full in _files_under(path):
        with contextlib.suppress(OSError):
            info = full.stat()
            listing.append((rel, full, info.st_size, info.st_mtime_ns))
    signature = hashlib.sha256(
        "\n".join(f"{rel}\0{size}\0{mtime}" for rel, _, size, mtime in listing).encode()
    ).hexdigest()
    cache = cache if cache is not None else FingerprintCache()
    key = f"path:{path}"
    hit = cache.get(key, signature)
    if hit is not None:
        _SEEN[str(path)] = {k: hit[k] for k in ("kind", "path", "sha256", "files", "bytes")}
        return dict(_SEEN[str(path)])
    digest = hashlib.sha256()
    total = 0
    for rel, full, size, _ in listing:
        content = hashlib.sha256()
        with contextlib.suppress(OSError), full.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                content.update(chunk)
        digest.update(f"{rel}\0{content.hexdigest()}\n".encode())
        total += size
    entry = {
        "kind": "files", "path": str(path), "sha256": digest.hexdigest(), "files": len(listing),
        "bytes": total,
    }  # fmt: skip
    cache.put(key, {**entry, "signature": signature})
    _SEEN[str(path)] = entry
    return dict(entry)


def _generator_signature(ref: DataRef) -> str:
    """What a generated set's bytes depend on: its options, the code and the libraries."""
    from bmssl.data import offline
    from bmssl.provenance import package_versions

    code = hashlib.sha256(Path(offline.__file__).read_bytes()).hexdigest()
    libraries = package_versions(("numpy", "torch", "pillow", "scikit-learn"))
    return hashlib.sha256(
        json.dumps([ref.key, ref.options, code, libraries], sort_keys=True, default=str).encode()
    ).hexdigest()


def fingerprint_generated(ref: DataRef, cache: FingerprintCache | None = None) -> dict[str, Any]:
    """The bytes of an offline set's images and labels as this machine generates them."""
    import numpy as np

    from bmssl.data import get_dataset
    from bmssl.provenance import preserved_rng

    cache = cache if cache is not None else FingerprintCache()
    signature = _generator_signature(ref)
    key = f"generated:{ref.key}:{json.dumps(ref.options, default=str)}"
    hit = cache.get(key, signature)
    if hit is not None:
        return {k: hit[k] for k in ("kind", "sha256", "images", "shape")}
    with preserved_rng():
        pool = get_dataset(
            ref.name, None, split="train", protocol="unlabeled",
            image_size=ref.image_size or 28, **dict(ref.options),
        )  # fmt: skip
        digest = hashlib.sha256()
        for start in range(0, len(pool), 4096):
            batch = pool.get_batch(np.arange(start, min(len(pool), start + 4096)))
            digest.update(batch.contiguous().numpy().tobytes())
        digest.update(np.asarray(pool.targets, dtype=np.int64).tobytes())
    entry = {
        "kind": "generated", "sha256": digest.hexdigest(), "images": len(pool),
        "shape": list(pool.image_shape),
    }  # fmt: skip
    cache.put(key, {**entry, "signature": signature})
    return entry


def _local_path(ref: DataRef) -> Path | None:
    """The folder or file holding a set's bytes: its root, or the path in ``prefix:<path>``."""
    if ref.root is not None:
        return Path(ref.root).expanduser()
    if ":" in ref.name:
        candidate = Path(ref.name.split(":", 1)[1]).expanduser()
        if candidate.exists():
            return candidate
    return None


def fingerprint_dataset(ref: DataRef, cache: FingerprintCache | None = None) -> dict[str, Any]:
    """One set's fingerprint (see :func:`fingerprint_datasets`); never raises."""
    if os.environ.get(FINGERPRINT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return {"kind": "skipped", "sha256": None, "reason": f"{FINGERPRINT_ENV}=0"}
    try:
        path = _local_path(ref)
        if path is not None:
            if not path.exists():
                return {"kind": "missing", "sha256": None, "path": str(path)}
            return fingerprint_path(path, cache)
        if ref.name in GENERATED_SETS:
            return fingerprint_generated(ref, cache)
    except Exception as err:  # noqa: BLE001 - provenance never fails a run
        return {"kind": "error", "sha256": None, "reason": f"{type(err).__name__}: {err}"}
    return {"kind": "unknown", "sha256": None, "reason": "no local root to hash"}


def fingerprint_datasets(
    refs: Iterable[DataRef], directory: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """``{ref.key: fingerprint}``: ``kind`` (``files``, ``generated``, ``missing``,
    ``unknown``, ``skipped`` or ``error``) and ``sha256`` of the bytes (None when not hashed).
    ``directory``: where the cache lives (default :func:`cache_dir`)."""
    cache = FingerprintCache(directory)
    return {ref.key: fingerprint_dataset(ref, cache) for ref in refs}
