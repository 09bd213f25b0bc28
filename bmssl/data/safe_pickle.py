"""Reading pickles of numpy arrays without letting the file run code.

A pickle names the functions that rebuild its objects, and a full ``pickle.load`` imports and
calls whatever it names (``os.system`` included), so opening a data file someone else made is
running their code. Data caches such as learn2learn's miniImageNet pickles hold only dicts,
lists, strings, numbers and numpy arrays, so :func:`load_data_pickle` unpickles with a
restricted :class:`pickle.Unpickler` (the "restricting globals" recipe of the ``pickle`` docs):
``find_class`` hands out only numpy's array, dtype and scalar rebuilders and a latin-1-only
``_codecs.encode`` (how protocol 2 carries bytes), and refuses every other name with
:class:`UnsafePickleError` before anything is imported or called. Every other opcode that calls
code (``REDUCE``, ``NEWOBJ``, ``BUILD``, ``EXT*``) can only reach objects ``find_class`` made, and
persistent ids are refused by the base class. This is the same boundary as
``torch.load(weights_only=True)``, which the harness uses for checkpoints.

Memory: the C unpickler reads each array's bytes once and numpy builds the array on that buffer
(protocols 3-5), so loading costs about the array's size; protocol 2 pickles carry bytes as text
and briefly need a few times that.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.errors import UserError

__all__ = ["UnsafePickleError", "load_data_pickle", "numpy_attr"]

# Errors a damaged or truncated pickle raises from the C unpickler.
PICKLE_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


class UnsafePickleError(UserError):
    """A pickle that names a global outside the data allow-list; refused, never run."""


def numpy_attr(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>`` (numpy 2), else ``numpy.core.<module>.<name>`` (numpy 1).

    Imported by its real name: numpy 2's ``numpy.core`` shim warns on every access."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _refusal(where: str, what: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to unpickle {where}: it names {what}, which only a full unpickle (one that "
        "can run code from the file) could load, and a data cache holds only numpy arrays, "
        "dicts, lists and numbers; replace the file with a genuine copy"
    )


def _allowed(where: str) -> dict[tuple[str, str], Callable[..., Any]]:
    def latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
        # Protocol 2 writes bytes as _codecs.encode(<latin-1 text>, "latin1"); no other codec
        # is needed, so a file cannot make us look up arbitrary codecs.
        if encoding.lower().replace("-", "").replace("_", "") != "latin1":
            raise _refusal(where, f"_codecs.encode with encoding {encoding!r}")
        return codecs.encode(text, "latin1")

    reconstruct = numpy_attr("multiarray", "_reconstruct")
    scalar = numpy_attr("multiarray", "scalar")
    frombuffer = numpy_attr("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): latin1_encode,
    }
    # Pickles written under numpy 1 name numpy.core, under numpy 2 numpy._core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain data and numpy arrays, and nothing else."""

    def __init__(self, file: Any, where: str) -> None:
        # latin1: Python 2 pickles of numpy arrays carry their bytes as str (numpy's advice).
        super().__init__(file, encoding="latin1")
        self.where = where
        self.allowed = _allowed(where)

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise _refusal(self.where, f"{module}.{name}")
        return found


def load_data_pickle(path: Path) -> Any:
    """The object pickled in ``path``, rebuilt without running code from the file.

    Raises :class:`UnsafePickleError` (a :class:`UserError`) when the file names anything but
    numpy's array rebuilders, and :class:`UserError` when it is not a complete pickle.
    """
    where = repr(str(path))
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, where).load()
    except UnsafePickleError:
        raise
    except PICKLE_READ_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(
            f"cannot read {where}: not a complete pickle ({reason}); download or copy it again"
        ) from None
