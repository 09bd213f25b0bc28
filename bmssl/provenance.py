"""Provenance of a result: the code, software, machine, settings and data that produced it.

:func:`collect` returns one JSON-able record. Every results table, claims report, search report
and run folder stores it (the table JSON under ``meta.provenance``, a run folder as
``provenance.json``) and every Markdown table shows :func:`summary_line` under it:

- ``code``: the harness's git commit, whether the work tree was dirty and a hash of the local
  edits (``git diff HEAD`` plus the untracked files), and the harness version;
- ``python`` and ``packages`` (torch, torchvision, higher, ray, numpy, numba, ...);
- ``machine``: OS, CPU model and core count, GPU model, count and memory, CUDA and cuDNN;
- ``torch``: threads, deterministic algorithms, cuDNN and TF32 settings; ``environment``: the
  variables that change them (``OMP_NUM_THREADS``, ``CUBLAS_WORKSPACE_CONFIG``, ...);
- ``datasets``: a fingerprint of each dataset's bytes (:func:`fingerprint_datasets`): the files
  under its root, or the images an offline set (digits, glyphs) generates. Hashing a large set
  is done once per machine: the result is cached in ``fingerprints.json`` under
  ``$BMSSL_CACHE_DIR`` (default ``~/.cache/bmssl``), keyed by the path and the size and
  modification time of every file under it (for a generated set: its options and the code and
  library versions that generate it). ``BMSSL_FINGERPRINT_DATA=0`` skips the bytes;
- whatever the caller adds: the command line, the resolved config of every row, wall times.

Collecting touches no random number generator (:func:`preserved_rng`), so a trainer's numbers
are the same with or without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: version of the record's layout
SCHEMA = 1
#: the libraries whose versions a record lists (None when one is not installed)
PACKAGES = ("torch", "torchvision", "higher", "ray", "numpy", "numba", "scipy", "scikit-learn")
#: environment variables that change threads, determinism or devices
ENVIRONMENT = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES",
    "PYTHONHASHSEED", "BMSSL_PLUGINS",
)  # fmt: skip
#: offline sets whose images are generated in memory (fingerprinted by those bytes)
GENERATED_SETS = ("digits", "glyphs")
#: environment switch: ``0`` records the datasets without hashing their bytes
FINGERPRINT_ENV = "BMSSL_FINGERPRINT_DATA"
CACHE_ENV = "BMSSL_CACHE_DIR"
CACHE_FILE = "fingerprints.json"
_CHUNK = 1 << 20
#: untracked files larger than this enter the diff hash by size and time, not by content
_UNTRACKED_LIMIT = 16 << 20
#: the folders this process has fingerprinted (a dataset does not change under a running job)
_SEEN: dict[str, dict[str, Any]] = {}


def now_utc() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- code ---------------------------------------------------------------------------------------


def source_root() -> Path:
    """The folder holding the harness's packages (a git work tree in a source checkout)."""
    return Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def code_state(root: Path | None = None) -> dict[str, Any]:
    """``commit``, ``dirty``, ``diff_sha256`` (tracked edits and untracked files; None when
    clean), ``changed_files``, ``untracked_files`` and ``version`` of the harness. ``commit`` is
    None outside a git checkout of the harness (e.g. an installed copy). Computed once per
    process."""
    root = source_root() if root is None else root
    record: dict[str, Any] = {
        "version": harness_version(),
        "repo": None,
        "commit": None,
        "dirty": None,
        "diff_sha256": None,
        "changed_files": None,
        "untracked_files": None,
    }
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.decode().strip()).resolve() != root.resolve():
        return record  # not a checkout of the harness itself
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all")
    diff = _git(root, "diff", "HEAD", "--binary")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    record["repo"] = str(root)
    record["commit"] = commit.decode().strip() if commit else None
    if status is None or diff is None or untracked is None:
        return record
    new_files = sorted(p for p in untracked.decode(errors="replace").split("\0") if p)
    entries = [e for e in status.decode(errors="replace").split("\0") if e]
    changed = [e for e in entries if not e.startswith("??")]
    record["dirty"] = bool(entries)
    record["changed_files"] = len(changed)
    record["untracked_files"] = len(new_files)
    if entries:
        digest = hashlib.sha256(diff)
        for name in new_files:
            path = root / name
            digest.update(b"\0untracked\0" + name.encode() + b"\0")
            with contextlib.suppress(OSError):
                info = path.stat()
                if info.st_size > _UNTRACKED_LIMIT:
                    digest.update(f"{info.st_size}:{info.st_mtime_ns}".encode())
                else:
                    digest.update(path.read_bytes())
        record["diff_sha256"] = digest.hexdigest()
    return record


def harness_version() -> str | None:
    return package_version("bmssl-harness")


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# -- software and machine ---------------------------------------------------------------------


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` says)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.decode().strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """OS, CPU model and cores, GPUs (model, memory), CUDA and cuDNN versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable,
        **gpu_info(),
    }


def gpu_info() -> dict[str, Any]:
    """``gpus`` (name and memory of each visible GPU), ``cuda`` and ``cudnn`` versions."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"gpus": gpus, "gpu_count": len(gpus), "cuda": torch.version.cuda, "cudnn": cudnn}


def torch_settings() -> dict[str, Any]:
    """Threads, deterministic algorithms, cuDNN and TF32 settings of this process."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "cudnn_benchmark": bool(cudnn.benchmark),
        "tf32_matmul": bool(matmul.allow_tf32),
        "tf32_cudnn": bool(cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def environment() -> dict[str, str]:
    return {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}


def collect(
    *,
    datasets: Mapping[str, Any] | None = None,
    configs: Any = None,
    command: Mapping[str, Any] | None = None,
    wall_time_s: float | None = None,
    started_at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance record (see the module docstring); ``datasets`` as
    :func:`fingerprint_datasets` returns them, ``configs`` the resolved config(s), ``command``
    how the result was made; ``extra`` keys are added as they are."""
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": now_utc(),
        "started_at": started_at,
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 3),
        "code": dict(code_state()),
        "python": {"version": platform.python_version(), "implementation": sys.implementation.name},
        "packages": package_versions(),
        "machine": machine_info(),
        "torch": torch_settings(),
        "environment": environment(),
        "command": dict(command) if command is not None else None,
        "datasets": dict(datasets) if datasets is not None else {},
        "configs": configs,
    }
    record.update(extra)
    return record


# -- the one line and comparisons ---------------------------------------------------------------


def _short(value: str | None, n: int = 10) -> str:
    return "?" if not value else value[:n]


def summary_line(record: Mapping[str, Any]) -> str:
    """One Markdown line: code, software, machine, torch settings and data (nothing that
    changes from one run of the same result to the next, such as times)."""
    code = record.get("code") or {}
    packages = record.get("packages") or {}
    machine = record.get("machine") or {}
    settings = record.get("torch") or {}
    commit = "no git commit" if not code.get("commit") else f"commit {_short(code['commit'])}"
    if code.get("dirty"):
        # Their hash is in the JSON only: the line of a rerun of the same result stays the same.
        commit += " + local edits"
    elif code.get("dirty") is False:
        commit += " (clean)"
    software = ", ".join(
        f"{name} {packages[name]}" for name in ("torch", "numpy") if packages.get(name)
    )
    gpus = machine.get("gpus") or []
    if gpus:
        hardware = f"{len(gpus)}× {gpus[0]['name']} ({gpus[0]['memory_gib']} GiB), CUDA " + (
            f"{machine.get('cuda')}, cuDNN {machine.get('cudnn')}"
        )
    else:
        hardware = "no GPU"
    flags = [f"{settings.get('threads', '?')} torch thread(s)"]
    on = settings.get("deterministic_algorithms")
    flags.append(f"deterministic algorithms {'on' if on else 'off'}")
    if gpus:
        flags.append("TF32 on" if settings.get("tf32_matmul") else "TF32 off")
    data = ", ".join(
        f"{name} {_short(entry.get('sha256'), 8)}"
        for name, entry in (record.get("datasets") or {}).items()
        if isinstance(entry, Mapping)
    )
    parts = [
        f"bmssl-harness {code.get('version') or '?'} at {commit}",
        f"Python {(record.get('python') or {}).get('version', '?')}, {software}",
        f"{machine.get('cpu', '?')} ({machine.get('cpu_cores', '?')} cores), {hardware}",
        ", ".join(flags),
    ]
    if data:
        parts.append(f"data {data}")
    return "Provenance: " + "; ".join(parts) + " (full record in the JSON)."


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of scalars kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(record, Mapping):
        if not record and prefix:
            out[prefix.rstrip(".")] = {}
        for key, value in record.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(record, list) and any(isinstance(v, (Mapping, list)) for v in record):
        for i, value in enumerate(record):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    out[prefix.rstrip(".")] = record
    return out


#: what varies from run to run of the same result (left out of :func:`differences`)
VOLATILE = ("created_at", "started_at", "wall_time_s", "command.cwd")


def differences(
    a: Mapping[str, Any], b: Mapping[str, Any], skip: Iterable[str] = VOLATILE
) -> list[tuple[str, Any, Any]]:
    """``(key, value in a, value in b)`` of every flattened key where two records differ."""
    skipped = tuple(skip)
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [
        (k, fa.get(k), fb.get(k))
        for k in keys
        if fa.get(k) != fb.get(k) and not any(k == s or k.startswith(s + ".") for s in skipped)
    ]


def machine_kind(record: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree for a CPU result to repeat bit for bit: CPU model and architecture,
    torch and numpy versions, Python version."""
    machine = record.get("machine") or {}
    packages = record.get("packages") or {}
    return {
        "cpu": machine.get("cpu"),
        "arch": machine.get("arch"),
        "torch": packages.get("torch"),
        "numpy": packages.get("numpy"),
        "python": (record.get("python") or {}).get("version"),
    }


# -- random state ---------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing Python's, NumPy's and torch's global random state."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# -- datasets -------------------------------------------------------------------------------


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

    code = hashlib.sha256(Path(offline.__file__).read_bytes()).hexdigest()
    libraries = package_versions(("numpy", "torch", "pillow", "scikit-learn"))
    return hashlib.sha256(
        json.dumps([ref.key, ref.options, code, libraries], sort_keys=True, default=str).encode()
    ).hexdigest()


def fingerprint_generated(ref: DataRef, cache: FingerprintCache | None = None) -> dict[str, Any]:
    """The bytes of an offline set's images and labels as this machine generates them."""
    import numpy as np

    from bmssl.data import get_dataset

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
