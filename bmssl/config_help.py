"""Listing a config's options with their types and the defaults in force (``--help``)."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

from bmssl.config import field_types, section_class


def iter_options(
    cls: type, prefix: str = "", defaults: Any = None
) -> Iterator[tuple[str, str, Any]]:
    """``(dotted name, type text, default)`` of every option of ``cls``, sections expanded.

    ``defaults`` (an instance of ``cls``; default ``cls()``) gives the values shown: a method's
    config in force, whose sections may differ from their classes' own defaults."""
    types_ = field_types(cls)
    defaults = cls() if defaults is None else defaults
    for name, annotation in types_.items():
        section = section_class(annotation)
        if section is not None:
            yield from iter_options(section, f"{prefix}{name}.", getattr(defaults, name))
            continue
        yield prefix + name, _type_text(annotation), getattr(defaults, name)


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (list, tuple, dict):
        return getattr(origin, "__name__", str(origin))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def options_help(cls: type, defaults: Any = None) -> str:
    """One line per option of ``cls``: ``name (type, default value)`` — for ``--help``; the
    values of ``defaults`` (the config in force) when given, else ``cls()``'s."""
    rows = list(iter_options(cls, defaults=defaults))
    width = max((len(name) for name, _, _ in rows), default=0)
    return "\n".join(
        f"  {name:<{width}}  {kind}, default {default!r}" for name, kind, default in rows
    )
