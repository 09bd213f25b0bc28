"""Checkpoints with the RNG state (so a killed run resumes exactly) and plain weight files.

Checkpoints are read with ``torch.load(..., weights_only=True)``: opening a file someone sent
cannot run code. Everything :func:`save_checkpoint` writes (the RNG state included) is therefore
kept to tensors and plain Python values, and a file that needs a full unpickle is refused with an
:class:`UnsafeCheckpointError` rather than opened unsafely. Even :func:`upgrade_checkpoint`,
which reads the older format whose RNG state held numpy arrays, never unpickles fully: it allows
numpy's array and scalar rebuilders and nothing else.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from bmssl.errors import CheckpointError, UnsafeCheckpointError
from bmssl.io import atomic_write

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "save_weights",
    "seed_everything",
    "set_rng_state",
    "upgrade_checkpoint",
]


# -- RNG state --------------------------------------------------------------------------------


def _rng_to_plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """RNG snapshot with python's tuple and numpy's ndarray state turned into ints and tensors,
    which ``torch.load(weights_only=True)`` reads back (an ndarray needs a full unpickle).

    Accepts both the raw ``random.getstate()`` / ``np.random.get_state()`` tuples (what older
    checkpoints hold) and the already-plain form.
    """
    python = state["python"]
    if not isinstance(python, dict):
        version, internal, gauss_next = python
        python = {
            "version": int(version),
            "state": torch.tensor([int(x) for x in internal], dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        }
    numpy_state = state["numpy"]
    if not isinstance(numpy_state, dict) or "key" not in numpy_state:
        if isinstance(numpy_state, dict):  # np.random.get_state(legacy=False)
            name = numpy_state["bit_generator"]
            key, pos = numpy_state["state"]["key"], numpy_state["state"]["pos"]
            has_gauss, gauss = numpy_state["has_gauss"], numpy_state["gauss"]
        else:  # legacy tuple ('MT19937', key, pos, has_gauss, cached_gaussian)
            name, key, pos, has_gauss, gauss = numpy_state
        numpy_state = {
            "bit_generator": str(name),
            # uint32 words; int64 holds them exactly and is an ordinary tensor dtype.
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    return {"python": python, "numpy": numpy_state, "torch": state["torch"]}


def rng_state() -> dict[str, Any]:
    """Snapshot of every global RNG a CPU training run draws from, as tensors and plain values
    (safe for ``torch.load(weights_only=True)``)."""
    return _rng_to_plain(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(legacy=True),
            "torch": torch.get_rng_state(),
        }
    )


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state` (or the raw tuples older versions stored)."""
    plain = _rng_to_plain(state)
    python = plain["python"]
    internal = tuple(int(x) for x in torch.as_tensor(python["state"]).tolist())
    random.setstate((int(python["version"]), internal, python["gauss_next"]))
    numpy_state = plain["numpy"]
    np.random.set_state(
        (
            str(numpy_state["bit_generator"]),
            np.asarray(torch.as_tensor(numpy_state["key"]).tolist(), dtype=np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["gauss"]),
        )
    )
    torch.set_rng_state(torch.as_tensor(plain["torch"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- checkpoints ------------------------------------------------------------------------------

# Exact types torch's weights_only unpickler rebuilds. Exact, because subclasses (namedtuples,
# defaultdicts, enums, numpy scalars) pickle as their class and are refused on load.
_PLAIN_LEAVES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.dtype,
    torch.device,
    torch.Size,
)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy scalars and paths turned into Python values; a ``TypeError`` naming the
    entry for anything ``torch.load(weights_only=True)`` could not read back.

    Checking at save time matters: otherwise a run trains for hours and only the resume fails.
    Containers are rebuilt only when something inside changed, so a module ``state_dict`` keeps
    its ``_metadata``.
    """
    kind = type(obj)
    if kind in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()  # np.float64 in a metrics dict would otherwise need a full unpickle
    if isinstance(obj, PurePath):
        return str(obj)
    if kind is dict or kind is OrderedDict:
        items = [
            (_plain(k, f"{where}[{k!r}]"), _plain(v, f"{where}[{k!r}]")) for k, v in obj.items()
        ]
        if all(k2 is k and v2 is v for (k2, v2), (k, v) in zip(items, obj.items())):
            return obj
        rebuilt = kind(items)
        if kind is OrderedDict:
            rebuilt.__dict__.update(vars(obj))
        return rebuilt
    if kind in (list, tuple, set):
        values = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(v2 is v for v2, v in zip(values, obj)):
            return obj
        return kind(values)
    raise TypeError(
        f"checkpoint entry {where} is a {kind.__module__}.{kind.__qualname__}, which "
        f"torch.load(weights_only=True) cannot read back; store tensors, plain Python values and "
        f"dicts/lists/tuples of them (e.g. dataclasses.asdict(...), array.tolist())"
    )


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically save ``state`` (plus the global RNG state) with ``torch.save``.

    ``state`` must hold only what ``torch.load(weights_only=True)`` reads back: tensors, plain
    Python values, dicts/lists/tuples of them (numpy scalars and paths are converted); anything
    else raises ``TypeError`` naming the entry, before the file is touched.
    """
    payload = dict(_plain(dict(state), "state"))
    payload["rng"] = rng_state()
    return atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load_weights_only(path: Path, kind: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` with each way of failing turned into a one-line
    :class:`CheckpointError` naming ``path``; an unsafe file is refused, never opened fully."""
    shown = repr(str(path))
    if not path.exists():
        raise CheckpointError(f"{kind} {shown} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{kind} {shown} is a folder, not a file; pass the file inside it")
    try:
        with warnings.catch_warnings():
            # Garbage that looks like a newer pickle protocol would print a confusing warning.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = sorted(set(_UNSAFE_GLOBAL.findall(str(err))))
        if not names:
            raise CheckpointError(_corrupt(kind, path, err, fix)) from err
        if all(name.startswith("numpy") for name in names):
            how = (
                "it was probably written by an older version of this harness: if you trust "
                f"where it came from, re-save it once with "
                f"bmssl.checkpoints.upgrade_checkpoint({str(path)!r}); otherwise "
            )
        else:
            how = (
                "if you trust where it came from, re-save it holding only tensors and plain "
                "values (bmssl.checkpoints.save_checkpoint / save_weights); otherwise "
            )
        raise UnsafeCheckpointError(
            f"refusing to open {kind} {shown}: weights_only load failed: the file holds Python "
            f"objects ({', '.join(names)}) that only a full unpickle can load, which can run "
            f"code; {how}{fix}"
        ) from err
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):  # describe_os_error speaks of writing
            raise CheckpointError(
                f"cannot read {kind} {shown}: no permission; fix its permissions"
            ) from err
        if err.errno not in (None, errno.EINVAL):  # torch reports some truncations as EINVAL
            raise  # a real I/O fault (EIO, ...), not a bad file
        raise CheckpointError(_corrupt(kind, path, err, fix)) from err
    except Exception as err:
        # Truncated zip (RuntimeError), empty file (EOFError), text (KeyError/RuntimeError), ...:
        # any other failure of torch.load on a readable file means the file is bad.
        raise CheckpointError(_corrupt(kind, path, err, fix)) from err


def _corrupt(kind: str, path: Path, err: BaseException, fix: str) -> str:
    """One-line message for a file torch cannot parse."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    # First sentence only: torch appends paragraphs of advice that do not fit one line.
    first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
    reason = "the file is empty" if empty else f"{type(err).__name__}: {first}"[:160]
    return f"{kind} {str(path)!r} is truncated or corrupt ({reason}); {fix}"


#: what to do about a bad checkpoint; every command that reads one (train, eval, the BiSSL and
#: table drivers) takes --out, so the fix is runnable whichever it was
_CHECKPOINT_FIX = "delete it to start over, or use another --out"


def load_checkpoint(
    path: str | os.PathLike,
    restore_rng: bool = True,
    expect_keys: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; restore global RNGs by default.

    Loads with ``weights_only=True``. Raises :class:`CheckpointError` (a :class:`UserError`)
    naming the file when it is missing, empty, truncated, not a PyTorch file, not a dict, or
    lacks one of ``expect_keys`` (e.g. ``("method", "step")``: a file not written by
    :func:`save_checkpoint`), and :class:`UnsafeCheckpointError` when it could only be opened by
    a full unpickle.
    """
    path = Path(path)
    state = _load_weights_only(path, "checkpoint", _CHECKPOINT_FIX)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a training checkpoint; "
            f"{_CHECKPOINT_FIX}"
        )
    missing = [key for key in (expect_keys or ()) if key not in state]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint of this harness (no {', '.join(map(repr, missing))}"
            f" entry); pass the right file, or {_CHECKPOINT_FIX}"
        )
    if restore_rng and "rng" in state:
        try:
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has a malformed RNG state ({type(err).__name__}: "
                f"{err}); {_CHECKPOINT_FIX}"
            ) from err
    return state


def upgrade_checkpoint(path: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Re-save a checkpoint written by an older version of this harness (whose RNG state held
    numpy arrays) so that :func:`load_checkpoint` opens it; writes ``dst`` (default: in place).

    Reads with ``weights_only=True`` plus numpy's array, dtype and scalar rebuilders only, so
    even this cannot run code from the file: anything else it names is refused with an
    :class:`UnsafeCheckpointError`. Returns the path written.
    """
    path = Path(path)
    with torch.serialization.safe_globals(_numpy_globals()):
        state = _load_weights_only(path, "checkpoint", _CHECKPOINT_FIX)
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not a checkpoint")
    payload = dict(_plain({k: v for k, v in state.items() if k != "rng"}, "state"))
    if "rng" in state:
        payload["rng"] = _rng_to_plain(state["rng"])
    return atomic_write(path if dst is None else dst, lambda f: torch.save(payload, f), mode="wb")


def _numpy_globals() -> list[Any]:
    """What an old checkpoint's numpy RNG state needs: numpy's array, dtype and scalar
    rebuilders, under the names numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) write."""
    from bmssl.data.safe_pickle import numpy_attr

    allowed: list[Any] = [np.ndarray, np.dtype]
    # numpy 2 rebuilds a dtype as an instance of its class (numpy.dtypes.UInt32DType, ...).
    allowed += sorted({type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}, key=str)
    for name in ("_reconstruct", "scalar"):
        rebuild = numpy_attr("multiarray", name)
        allowed += [
            (rebuild, f"{package}.multiarray.{name}") for package in ("numpy.core", "numpy._core")
        ]
    return allowed


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Atomically save a ``{name: tensor}`` state dict (e.g. an exported backbone) that
    ``torch.load(path, weights_only=True)`` and :func:`load_weights` read back.

    Tensors are detached and moved to the CPU; a view is copied so that the file does not carry
    the whole storage it views. Raises ``TypeError`` for a non-string key or non-tensor value.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                f"save_weights takes {{str: Tensor}}, got {name!r}: {type(value).__name__}"
            )
        tensor = value.detach().cpu()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        tensors[name] = tensor
    return atomic_write(path, lambda f: torch.save(tensors, f), mode="wb")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``{name: tensor}`` state dict with ``weights_only=True`` (see :func:`save_weights`).

    Raises :class:`CheckpointError` naming the file when it is unreadable or holds anything but
    tensors keyed by name (a training checkpoint goes through :func:`load_checkpoint`).
    """
    path = Path(path)
    fix = "export the weights again"
    obj = _load_weights_only(path, "weights file", fix)
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        hint = (
            " (it looks like a training checkpoint: load it with load_checkpoint)"
            if isinstance(obj, dict) and "trainer" in obj
            else ""
        )
        raise CheckpointError(
            f"{str(path)!r} is not a weights file (a dict of named tensors){hint}; "
            f"pass the right file or {fix}"
        )
    return dict(obj)


def latest_checkpoint(directory: str | os.PathLike, pattern: str = "step_*.pt") -> Path | None:
    """Checkpoint in ``directory`` with the highest step number, or None.

    Files whose name does not end in ``_<number>`` (e.g. ``step_x.pt`` left by hand) are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    numbered = []
    for found in directory.glob(pattern):
        suffix = found.stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            numbered.append((int(suffix), found))
    return max(numbered)[1] if numbered else None
