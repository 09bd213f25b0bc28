"""Dataclass configs: load from YAML, override from the command line (``key=value``), validate.

Each method has one config dataclass; its field defaults are the one place a default lives.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmssl.errors import UserError

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (a YAML scalar or a command-line string) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"bad value {value!r} for {name}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(
                f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, args))}"
            )
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        items = [_coerce(name, v, item) for v in value]
        return items if origin is list else tuple(items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name}={value!r} is not a boolean; use true or false")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise UserError(f"{name}={value!r} is not a number")
        try:
            number = float(value) if annotation is float else _to_int(value)
        except (TypeError, ValueError):
            kind = "an integer" if annotation is int else "a number"
            raise UserError(f"{name}={value!r} is not {kind}") from None
        return number
    if annotation is str:
        return str(value)
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Turn ``["lr=0.1", "steps=5"]`` into a dict; a token without ``=`` is a user error."""
    parsed: dict[str, str] = {}
    for token in overrides:
        if "=" not in token:
            raise UserError(
                f"override {token!r} is not of the form key=value (for example lr=0.01)"
            )
        key, value = token.split("=", 1)
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def config_from_dict(cls: type[C], values: Mapping[str, Any], base: C | None = None) -> C:
    """Build ``cls`` from ``values`` on top of ``base`` (or the defaults), coercing each field."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise UserError(
            f"unknown {cls.__name__} option(s): {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(types_))}"
        )
    current: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}  # type: ignore[call-overload]
    for key, value in values.items():
        current[key] = _coerce(key, value, types_[key])
    config = cls(**current)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> C:
    """Defaults of ``cls``, updated by a YAML file, then by ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"config file {str(path)!r} does not exist; pass the path to a YAML file"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {str(path)!r} must hold a mapping of option: value")
        values.update(loaded)
    if isinstance(overrides, Mapping):
        values.update(overrides)
    else:
        values.update(parse_overrides(overrides))
    return config_from_dict(cls, values)


def config_to_yaml(config: Any) -> str:
    """YAML text that :func:`load_config` turns back into an equal config."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def parse_args_with_overrides(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` overrides after options.

    argparse fills a positional ``overrides`` list only before the first option, so
    ``run --config c.yaml steps=5`` would fail; tokens left over that look like ``key=value``
    join ``args.overrides`` (where the chosen command has one), anything else is an error.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [t for t in extra if t.startswith("-") or "=" not in t]
    if extra and not hasattr(args, "overrides"):
        stray = extra
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args
