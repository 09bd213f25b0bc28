"""Dataclass configs: load from YAML, override from the command line (``key=value``), validate.

Each method has one config dataclass; its field defaults are the one place a default lives. A
field whose type is itself a dataclass is a *section* (BiSSL's ``finetune``, ``cg``, ...): in
YAML it is a nested mapping, on the command line its fields are reached with dotted names
(``finetune.lr=0.01``). Every YAML file of the repository (method configs, presets, table
profiles) goes through :func:`load_config`, so they share one set of checks and messages.

Parsing is bounded and unambiguous (:mod:`bmssl.yaml_strict`): YAML aliases, merge keys and
files over 1 MiB are refused (a kilobyte of aliases can expand to gigabytes), and a key given
twice, in a file or on the command line, is an error naming both values. An integer option
must fit in 64 bits, a seed must be >= 0 and a text option must not be empty.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bmssl.errors import UserError, one_line, shown
from bmssl.yaml_strict import YAML_ERRORS, load_yaml_file, load_yaml_text, yaml_error_text

#: integer options are C ``int64`` (torch, numpy); anything outside is refused up front
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

C = TypeVar("C")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def section_class(annotation: Any) -> type | None:
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
        raise UserError(errors[0] if errors else f"bad value {shown(value)} for {name}")
    if origin is typing.Literal:
        if not _is_scalar(value) or value not in args:
            raise UserError(
                f"{name}={shown(value)} is not allowed; choose one of: {', '.join(map(str, args))}"
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
                f"{name}={shown(value)} is not a mapping; write it as '{{key: value, other: 2}}'"
            )
        bad_keys = [k for k in value if not isinstance(k, str)]
        if bad_keys:
            raise UserError(f"{name} has a key {shown(bad_keys[0])} that is not text; quote it")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name}={shown(value)} is not a boolean; use true or false")
    if annotation is int:
        return _to_int(name, value)
    if annotation is float:
        return _to_float(name, value)
    if annotation is str:
        if not _is_scalar(value):
            raise UserError(f"{name}={shown(value)} is not text; pass a plain value")
        text = str(value)
        if not text.strip():
            raise UserError(f"{name} is empty; pass a value (or leave {name} out)")
        return text
    return value


def _key(name: Any) -> str:
    """An option name from the user's input, escaped and cut to fit one line of a message."""
    return one_line(repr(str(name))[1:-1], 80)


def _is_scalar(value: Any) -> bool:
    """A YAML scalar a text or choice option may take (not a list, mapping, bytes or date)."""
    return isinstance(value, (str, int, float))


def _is_seed(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "seed" or leaf.endswith("_seed")


def _yaml_value(name: str, text: str) -> Any:
    try:
        return load_yaml_text(text)
    except YAML_ERRORS as err:
        raise UserError(f"{name}={shown(text)} {yaml_error_text(err)}") from None


def _to_int(name: str, value: Any) -> int:
    """``value`` (a YAML number or command-line text) as an integer option in int64's range."""
    number = _integer_or_none(value)
    if number is None:
        raise UserError(f"{name}={shown(value)} is not an integer")
    if not INT_MIN <= number <= INT_MAX:
        raise UserError(
            f"{name}={shown(value)} is out of range: integer options must lie in "
            f"[{INT_MIN}, {INT_MAX}]; pass a smaller value"
        )
    if _is_seed(name) and number < 0:
        raise UserError(f"{name}={number} is negative; a seed must be >= 0 (for example 0)")
    return number


def _integer_or_none(value: Any) -> int | None:
    """The whole number ``value`` stands for (beyond int64 when it is huge), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        digits = text.lstrip("+-")
        if digits.isascii() and digits.isdigit() and len(text) - len(digits) <= 1:
            # Exact (a float would round long digit strings); past 40 digits the value is out
            # of range anyway, and Python refuses to parse more than 4300.
            sign = -1 if text.startswith("-") else 1
            return int(text) if len(digits) <= 40 else sign * 10**41
        try:
            value = float(text)
        except ValueError:
            return None
    if not isinstance(value, float) or value != value:  # not a number, or NaN
        return None
    if math.isinf(value):
        return INT_MAX + 1 if value > 0 else INT_MIN - 1
    return int(value) if value.is_integer() else None


def _to_float(name: str, value: Any) -> float:
    """``value`` as a float option (NaN and infinities are left to each config's checks)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{name}={shown(value)} is not a number")
    try:
        return float(value.strip().replace("_", "") if isinstance(value, str) else value)
    except OverflowError:
        raise UserError(f"{name}={shown(value)} is too large; pass a finite number") from None
    except ValueError:
        raise UserError(f"{name}={shown(value)} is not a number") from None


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Turn ``["lr=0.1", "finetune.steps=5"]`` into a dict; a token without ``=`` is an error,
    and so is a key given twice (``steps=5 steps=6``, ``eval-every=1 eval_every=2``)."""
    parsed: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for token in overrides:
        if "=" not in token:
            raise UserError(
                f"override {shown(token)} is not of the form key=value (for example steps=100)"
            )
        key, value = token.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise UserError(f"override {shown(token)} has no key; write key=value")
        if key in parsed:
            raise UserError(
                f"{_key(key)} is given twice ({shown(tokens[key])} and {shown(token)}); keep one"
            )
        parsed[key], tokens[key] = value.strip(), token
    return parsed


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}`` (dotted keys become sections).

    One option reached twice (``a.b`` and ``a: {b: ...}``) is an error naming both values.
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        _put(nested, str(key).split("."), value, str(key))
    return nested


def _put(target: dict[str, Any], path: list[str], value: Any, full: str) -> None:
    head, rest = path[0], path[1:]
    if rest:
        sub = target.setdefault(head, {})
        if not isinstance(sub, dict):
            raise UserError(f"{_key(head)} is not a section, so {_key(full)} is not an option")
        _put(sub, rest, value, full)
        return
    if isinstance(value, Mapping) and isinstance(target.get(head), dict):
        prefix = full.rsplit(".", 1)[0] + "." if "." in full else ""
        for key, inner in value.items():
            _put(target[head], str(key).split("."), inner, f"{prefix}{head}.{key}")
        return
    if head in target:
        raise UserError(
            f"{_key(full)} is given twice ({shown(target[head])} and {shown(value)}); keep one"
        )
    target[head] = value


def _build(
    cls: type[C], values: Mapping[str, Any], base: C | None, prefix: str, root: str = ""
) -> C:
    types_ = field_types(cls)
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise UserError(f"option name {shown(odd[0])} in {prefix or 'the config'} is not text")
    unknown = sorted(set(values) - set(types_))
    _refuse_renamed(cls, unknown, prefix)
    if unknown:
        where = (
            f"{root} option(s) in section {prefix[:-1]}" if prefix else f"{cls.__name__} option(s)"
        )
        names = ", ".join(prefix + _key(u) for u in unknown[:5])
        raise UserError(
            f"unknown {where}: {names}; known options: "
            f"{', '.join(prefix + k for k in sorted(types_))}"
        )
    if base is None and any(section_class(t) for t in types_.values()):
        base = cls()  # a section given in part keeps its field's own default for the rest
    current: dict[str, Any] = (
        {f: getattr(base, f) for f in types_} if base is not None else {}
    )  # fmt: skip
    for key, value in values.items():
        section = section_class(types_[key])
        if section is not None:
            if isinstance(value, section):
                current[key] = value
                continue
            if not isinstance(value, Mapping):
                raise UserError(
                    f"{prefix}{key} is a section; set its options as {prefix}{key}.NAME=VALUE "
                    f"(options: {', '.join(sorted(field_types(section)))})"
                )
            sub_base = current.get(key)
            current[key] = _build(section, value, sub_base, f"{prefix}{key}.", root or cls.__name__)
        else:
            annotation = types_[key]
            is_dict = annotation is dict or typing.get_origin(annotation) is dict
            if isinstance(value, Mapping) and not is_dict:
                inner = ", ".join(f"{prefix}{key}.{_key(k)}" for k in list(value)[:3])
                raise UserError(
                    f"{prefix}{key} is not a section, so {inner} is not an option; "
                    f"set it as {prefix}{key}=VALUE"
                )
            current[key] = _coerce(prefix + key, value, annotation)
    return cls(**current)


def _refuse_renamed(cls: type, unknown: list[str], prefix: str) -> None:
    """An option renamed since an earlier release names its new name (``RENAMED`` of ``cls``)."""
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    old = [name for name in unknown if name in renamed]
    if old:
        pairs = ", ".join(f"{prefix}{o} -> {prefix}{renamed[o]}" for o in old)
        raise UserError(f"{cls.__name__} option(s) renamed: {pairs}; write the new name instead")


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
    where = shown(str(path), 200)
    if path.is_dir():
        raise UserError(f"{what} {where} is a folder; pass the path to a YAML file")
    if not path.is_file():
        raise UserError(f"{what} {where} does not exist; pass the path to a YAML file")
    try:
        loaded = load_yaml_file(path)
    except YAML_ERRORS as err:
        raise UserError(f"{what} {where} {yaml_error_text(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} {where}: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {where} must hold a mapping of option: value")
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
