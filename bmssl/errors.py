"""User-facing errors and the command-line wrapper that turns them into exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """A mistake in the user's input (config value, dataset name, path).

    Command-line entry points print the message without a traceback and exit with code 2.
    The message should name the bad value and say how to fix it.
    """


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's local root is missing or incomplete."""


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI ``main`` so that a :class:`UserError` exits 2 with a one-line message."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def check_positive(name: str, value: float) -> None:
    """Raise a :class:`UserError` unless ``value > 0``."""
    if not value > 0:
        raise UserError(f"{name} must be positive, got {value!r}; pass a value greater than 0")


def check_choice(name: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    """Raise a :class:`UserError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
