"""User-facing errors and the command-line wrapper that turns them into exit code 2."""

from __future__ import annotations

import errno
import functools
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2
#: the longest error line a CLI prints; a longer message keeps its start and its end (the fix)
MESSAGE_LIMIT = 1000
#: characters of a user's value that a message echoes
VALUE_LIMIT = 80


class UserError(ValueError):
    """A mistake in the user's input (config value, dataset name, path).

    Command-line entry points print the message without a traceback and exit with code 2.
    The message should name the bad value and say how to fix it.
    """


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's local root is missing or incomplete."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A logged training quantity became NaN or infinite, almost always because a learning rate is
    too large (or a temperature too small) for the run.

    It is a :class:`UserError` so the CLIs print one line and exit 2, and still a
    ``FloatingPointError`` so code that caught the old exception keeps working.

    ``hint`` says what to change, e.g. ``"lower outer_lr (now 0.1) or inner_lr, or raise tau"``.
    """

    def __init__(self, method: str, key: str, value: float, step: int, hint: str = "") -> None:
        self.method = method
        self.key = key
        self.value = value
        self.step = step
        self.hint = hint or "lower the learning rate(s) of the run"
        super().__init__(f"{method}: {key} became {value} at step {step}; {self.hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The custom constructor breaks the default exception pickling; Ray ships exceptions
        # between processes, so rebuild from the constructor arguments.
        return (type(self), (self.method, self.key, self.value, self.step, self.hint))


class CheckpointError(UserError):
    """A checkpoint or weights file is missing, truncated, corrupt, foreign or unsafe to open.

    The message names the file and what to do (usually: delete it, or use another ``--out``).
    """


class UnsafeCheckpointError(CheckpointError):
    """A file that only a full (code-running) unpickle could load; refused, never opened."""


# errno values that mean "the user's environment cannot hold the output", never a bug. Anything
# else (EBADF, EINVAL, ...) may be a programming error and keeps its traceback.
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_NO_WRITE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_NOT_DIR = frozenset({errno.ENOTDIR})
_TOO_LONG = frozenset({errno.ENAMETOOLONG})
ENVIRONMENT_ERRNOS = _DISK_FULL | _NO_WRITE | _NOT_DIR | _TOO_LONG


def describe_os_error(err: BaseException, option: str = "--out") -> str | None:
    """One-line explanation and fix for an OSError caused by the user's environment.

    Returns None unless ``err`` is an ``OSError`` with one of :data:`ENVIRONMENT_ERRNOS` (disk
    full, read-only file system, no permission, a parent path that is a file, a name too long). Only the file name
    the error itself carries is printed. ``option`` names the flag that picks the location.
    """
    if not isinstance(err, OSError) or err.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = shown(str(err.filename), 200) if err.filename is not None else None
    if err.errno in _DISK_FULL:
        target = f"writing {where}" if where else "writing output"
        return f"disk full while {target} ({err.strerror}); free space or choose another {option}"
    if err.errno == errno.EROFS:
        target = f"cannot write {where}" if where else "cannot write output"
        return f"{target}: read-only file system; choose another {option}"
    if err.errno in _TOO_LONG:
        target = f"{where}: its name" if where else "a file or folder name"
        return f"{target} is too long for the file system; choose a shorter {option}"
    if err.errno in _NO_WRITE:  # EACCES, EPERM: may come from a read as well as a write
        target = f"no permission to access {where}" if where else "no permission"
        return f"{target} ({err.strerror}); fix the permissions or choose another {option}"
    target = f"a parent of {where}" if where else "a parent folder of the output"
    return f"{target} is a file, not a folder ({err.strerror}); choose another {option}"


def shown(value: Any, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing user input in a message.

    Never raises and never builds more than ``limit`` characters from the value: a huge integer
    (whose ``repr`` Python refuses above 4300 digits) is described by its size, a long string or
    container is cut and says how long it was.
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() <= 3 * limit:  # at most ~limit decimal digits: cheap and short
            return repr(value)
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, (str, bytes)):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # a repr that fails (huge nested ints, a broken object) says its type
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__})"


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` on one line, at most about ``limit`` characters (its start and its end kept:
    the start names the bad value, the end usually says how to fix it)."""
    flat = " ".join(str(message).split())
    if len(flat) <= limit:
        return flat
    half = limit // 2
    return f"{flat[:half]} ... {flat[-half:]}"


def _memory_message(err: BaseException) -> str | None:
    """One line for an allocation the machine could not satisfy (settings too large for it)."""
    text = one_line(str(err), 200)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        pass
    elif not (isinstance(err, RuntimeError) and "can't allocate memory" in text):
        return None
    detail = f" ({text})" if text else ""
    return (
        f"not enough memory for these settings{detail}; lower the sizes (width, batch sizes, "
        "image_size, n_way) or use a machine with more memory"
    )


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI ``main``: a :class:`UserError`, an environment ``OSError`` (disk full,
    read-only, no permission, parent is a file) or an allocation the machine cannot satisfy
    exits 2 with ONE line (at most :data:`MESSAGE_LIMIT` characters); Ctrl-C exits 130.

    Every other exception keeps its traceback, since it may be a bug.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            message: str | None = str(err)
        except OSError as err:
            message = describe_os_error(err)
            if message is None:
                raise
        except (MemoryError, RuntimeError) as err:
            message = _memory_message(err)
            if message is None:
                raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        print(f"error: {one_line(message or 'invalid input')}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None

    return wrapper


def _as_float(name: str, value: Any) -> float:
    """``value`` as a float, or a :class:`UserError` naming ``name`` when it is not a number.

    Accepts anything ``float()`` takes except text (numpy scalars, 0-d tensors), so callers that
    pass such values keep working; a string is a parsing bug upstream and is refused.
    """
    if isinstance(value, (str, bytes)):
        raise UserError(f"{name} must be a number, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        # An int too large for a float is finite but useless as a hyper-parameter.
        raise UserError(f"{name}={shown(value)} is too large; pass a finite number") from None
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {shown(value)}") from None


def check_finite(name: str, value: float) -> None:
    """Raise a :class:`UserError` unless ``value`` is a finite number (not NaN, not ±inf)."""
    if not math.isfinite(_as_float(name, value)):
        raise UserError(f"{name} must be a finite number, got {shown(value)}; pass a finite value")


def check_positive(name: str, value: float) -> None:
    """Raise a :class:`UserError` unless ``value`` is finite and ``> 0``."""
    number = _as_float(name, value)
    if not (math.isfinite(number) and number > 0):
        raise UserError(
            f"{name} must be positive and finite, got {shown(value)}; pass a finite value "
            "greater than 0"
        )


def check_nonnegative(name: str, value: float) -> None:
    """Raise a :class:`UserError` unless ``value`` is finite and ``>= 0``."""
    number = _as_float(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise UserError(
            f"{name} must be non-negative and finite, got {shown(value)}; pass a finite value >= 0"
        )


def check_range(
    name: str,
    value: float,
    low: float | None,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a :class:`UserError` unless ``value`` is finite and inside the interval.

    ``low``/``high`` of None leave that side unbounded; ``low_open``/``high_open`` exclude the
    bound itself (``(0, 1]`` is ``low_open=True``).
    """
    number = _as_float(name, value)
    inside = math.isfinite(number)
    if inside and low is not None:
        inside = number > low if low_open else number >= low
    if inside and high is not None:
        inside = number < high if high_open else number <= high
    if not inside:
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        right = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise UserError(
            f"{name} must be a finite number in {left}, {right}, got {shown(value)}; "
            f"pass a value in that range"
        )


def check_probability(name: str, value: float) -> None:
    """Raise a :class:`UserError` unless ``0 <= value <= 1``."""
    check_range(name, value, 0.0, 1.0)


def check_choice(name: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    """Raise a :class:`UserError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(
            f"unknown {name} {shown(value)}; choose one of: {', '.join(map(str, choices))}"
        )
