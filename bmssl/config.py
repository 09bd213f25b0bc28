"""Dataclass configs: load from YAML, override from the command line (``key=value``), validate.

Each method has one config dataclass; its field defaults are the one place a default lives. A
field whose type is itself a dataclass is a *section* (BiSSL's ``finetune``, ``cg``, ...): in
YAML it is a nested mapping, on the command line its fields are reached with dotted names
(``finetune.lr=0.01``). Every YAML file of the repository (method configs, presets, table
profiles) goes through :func:`load_config`, so they share one set of checks and messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmssl.errors import UserError

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _section_class(annotation: Any) -> type | None:
    """The dataclass a field holds (its section), or None for a plain field."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    return None


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
            value = _yaml_value(name, value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        items = [_coerce(name, v, item) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            text = value.strip()
            value = _yaml_value(name, text if text.startswith(("{", "[")) else "{" + text + "}")
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise UserError(
                f"{name}={value!r} is not a mapping; write it as '{{key: value, other: 2}}'"
            )
        return dict(value)
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
        except (TypeError, ValueError, OverflowError):
            kind = "an integer" if annotation is int else "a number"
            raise UserError(f"{name}={value!r} is not {kind}") from None
        return number
    if annotation is str:
        if isinstance(value, (Mapping, list)):
            raise UserError(f"{name}={value!r} is not a string")
        return str(value)
    return value


def _yaml_value(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "invalid YAML"
        raise UserError(f"{name}={text!r} is not valid YAML ({first})") from None


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Turn ``["lr=0.1", "finetune.steps=5"]`` into a dict; a token without ``=`` is an error."""
    parsed: dict[str, str] = {}
    for token in overrides:
        if "=" not in token:
            raise UserError(
                f"override {token!r} is not of the form key=value (for example lr=0.01)"
            )
        key, value = token.split("=", 1)
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}`` (dotted keys become sections)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = str(key).partition(".")
        if rest:
            sub = nested.setdefault(head, {})
            if not isinstance(sub, dict):
                raise UserError(f"{head} is not a section, so {key} is not an option")
            sub.update(_nest({rest: value}))
        elif isinstance(value, Mapping) and isinstance(nested.get(head), dict):
            nested[head].update(_nest(value))
        else:
            nested[head] = value
    return nested


def _build(
    cls: type[C], values: Mapping[str, Any], base: C | None, prefix: str, root: str = ""
) -> C:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        where = (
            f"{root} option(s) in section {prefix[:-1]}" if prefix else f"{cls.__name__} option(s)"
        )
        names = ", ".join(prefix + u for u in unknown)
        raise UserError(
            f"unknown {where}: {names}; known options: "
            f"{', '.join(prefix + k for k in sorted(types_))}"
        )
    if base is None and any(_section_class(t) for t in types_.values()):
        base = cls()  # a section given in part keeps its field's own default for the rest
    current: dict[str, Any] = (
        {f: getattr(base, f) for f in types_} if base is not None else {}
    )  # fmt: skip
    for key, value in values.items():
        section = _section_class(types_[key])
        if section is not None:
            if isinstance(value, section):
                current[key] = value
                continue
            if not isinstance(value, Mapping):
                raise UserError(
                    f"{prefix}{key} is a section; set its options as {prefix}{key}.NAME=VALUE "
                    f"(options: {', '.join(sorted(_field_types(section)))})"
                )
            sub_base = current.get(key)
            current[key] = _build(section, value, sub_base, f"{prefix}{key}.", root or cls.__name__)
        else:
            annotation = types_[key]
            is_dict = annotation is dict or typing.get_origin(annotation) is dict
            if isinstance(value, Mapping) and not is_dict:
                inner = ", ".join(f"{prefix}{key}.{k}" for k in value)
                raise UserError(
                    f"{prefix}{key} is not a section, so {inner} is not an option; "
                    f"set it as {prefix}{key}=VALUE"
                )
            current[key] = _coerce(prefix + key, value, annotation)
    return cls(**current)


def config_from_dict(cls: type[C], values: Mapping[str, Any], base: C | None = None) -> C:
    """Build ``cls`` from ``values`` on top of ``base`` (or the defaults), coercing each field.

    ``values`` may hold nested mappings for sections and dotted keys (``finetune.lr``). The
    result's ``validate()`` runs once, at the top (a config validates its own sections).
    """
    config = _build(cls, _nest(values), base, "")
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds; every failure is one :class:`UserError` line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; pass the path to a YAML file")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; pass the path to a YAML file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise UserError(f"{what} {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} {str(path)!r}: {err}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {str(path)!r} must hold a mapping of option: value")
    return loaded


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    base: C | None = None,
) -> C:
    """Defaults of ``cls`` (or ``base``), updated by a YAML file, then by overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _nest(read_yaml_mapping(path))
    extra = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    for key, value in _nest(extra).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = _nest({**values[key], **value})
        else:
            values[key] = value
    return config_from_dict(cls, values, base=base)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (sections as mappings)."""
    return dataclasses.asdict(config)


def config_to_yaml(config: Any) -> str:
    """YAML text that :func:`load_config` turns back into an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def iter_options(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(dotted name, type text, default)`` of every option of ``cls``, sections expanded."""
    types_ = _field_types(cls)
    defaults = cls()
    for name, annotation in types_.items():
        section = _section_class(annotation)
        if section is not None:
            yield from iter_options(section, f"{prefix}{name}.")
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


def options_help(cls: type) -> str:
    """One line per option of ``cls``: ``name (type, default value)`` — for ``--help``."""
    rows = list(iter_options(cls))
    width = max((len(name) for name, _, _ in rows), default=0)
    return "\n".join(
        f"  {name:<{width}}  {kind}, default {default!r}" for name, kind, default in rows
    )
