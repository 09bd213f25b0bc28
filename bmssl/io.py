"""Atomic file writes and checkpoint save/load with RNG state, so killed runs resume exactly."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write a file through ``write(fileobj)`` into a temp file, then rename it over ``path``.

    A reader never sees a half-written file, and a killed writer leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def rng_state() -> dict[str, Any]:
    """Snapshot of every global RNG a CPU training run draws from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically save ``state`` (plus the global RNG state) with ``torch.save``."""
    payload = dict(state)
    payload["rng"] = rng_state()
    return atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def load_checkpoint(path: str | os.PathLike, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; restore global RNGs by default."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


def latest_checkpoint(directory: str | os.PathLike, pattern: str = "step_*.pt") -> Path | None:
    """Checkpoint in ``directory`` with the highest step number, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(directory.glob(pattern), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    return found[-1] if found else None
