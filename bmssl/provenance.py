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
- ``datasets``: a fingerprint of each dataset's bytes (:func:`fingerprint_datasets`, in
  :mod:`bmssl.fingerprints` with its on-disk cache): the files under its root, or the images an
  offline set (digits, glyphs) generates. ``BMSSL_FINGERPRINT_DATA=0`` skips the bytes;
- whatever the caller adds: the command line, the resolved config of every row, wall times.

Collecting touches no random number generator (:func:`preserved_rng`), so a trainer's numbers
are the same with or without it. This module holds the collection; the dataset fingerprints
(:mod:`bmssl.fingerprints`) and the summary line and comparisons
(:mod:`bmssl.provenance_compare`) live beside it and are importable from here too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import os
import platform
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bmssl.fingerprints import (
    _SEEN,  # noqa: F401  (re-exported: the tests reset it)
    CACHE_ENV,
    CACHE_FILE,
    FINGERPRINT_ENV,
    GENERATED_SETS,
    DataRef,
    FingerprintCache,
    cache_dir,
    dataset_refs,
    fingerprint_dataset,
    fingerprint_datasets,
    fingerprint_generated,
    fingerprint_path,
)
from bmssl.provenance_compare import (
    VOLATILE,
    differences,
    flatten,
    format_seconds,
    machine_kind,
    summary_line,
)

# The collection below, and (re-exported) the fingerprints and the comparisons.
__all__ = [
    "CACHE_ENV",
    "CACHE_FILE",
    "ENVIRONMENT",
    "FINGERPRINT_ENV",
    "GENERATED_SETS",
    "PACKAGES",
    "SCHEMA",
    "VOLATILE",
    "DataRef",
    "FingerprintCache",
    "cache_dir",
    "code_state",
    "collect",
    "cpu_model",
    "dataset_refs",
    "differences",
    "environment",
    "fingerprint_dataset",
    "fingerprint_datasets",
    "fingerprint_generated",
    "fingerprint_path",
    "flatten",
    "format_seconds",
    "gpu_info",
    "harness_version",
    "machine_info",
    "machine_kind",
    "now_utc",
    "package_version",
    "package_versions",
    "preserved_rng",
    "source_root",
    "summary_line",
    "torch_settings",
]

#: version of the record's layout
SCHEMA = 1
#: the libraries whose versions a record lists (None when one is not installed)
PACKAGES = ("torch", "torchvision", "higher", "ray", "numpy", "numba", "scipy", "scikit-learn")
#: environment variables that change threads, determinism or devices
ENVIRONMENT = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES",
    "PYTHONHASHSEED", "BMSSL_PLUGINS",
)  # fmt: skip
#: untracked files larger than this enter the diff hash by size and time, not by content
_UNTRACKED_LIMIT = 16 << 20
#: untracked files that can change a result (code, configs); logs or outputs beside the checkout
#: (``table1.out``, ``*.err``) leave the tree clean
_CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".pth")


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
    """``commit``, ``dirty``, ``diff_sha256`` (tracked edits and untracked code or config
    files, :data:`_CODE_SUFFIXES`; None when clean), ``changed_files``, ``untracked_files`` and ``version`` of the harness. ``commit`` is
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
    new_files = sorted(
        p for p in untracked.decode(errors="replace").split("\0") if p.endswith(_CODE_SUFFIXES)
    )
    entries = [e for e in status.decode(errors="replace").split("\0") if e]
    changed = [e for e in entries if not e.startswith("??")]
    entries = changed + new_files
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
