"""Bounded, unambiguous YAML for configs, presets and table profiles.

``yaml.safe_load`` already refuses tags that build Python objects, but three things it accepts
are dangerous or ambiguous in a config file a user may have been sent:

- *aliases* (``*name``): a kilobyte of nested aliases (a "billion laughs") expands to gigabytes
  as soon as the value is walked or printed, so loading never returns. Aliases, and the merge
  key ``<<`` that needs them, are refused where they appear; a config never needs them.
- a key given twice: YAML keeps the last value silently; here it is an error naming both.
- size and depth: files over :data:`MAX_BYTES` and nesting deeper than :data:`MAX_DEPTH` are
  refused instead of exhausting memory or the stack.

Every refusal is a ``yaml.YAMLError`` (with a line and column where known), so callers handle
them with the ordinary YAML errors; :func:`yaml_error_text` turns any of them into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bmssl.errors import shown

__all__ = ["MAX_BYTES", "MAX_DEPTH", "YAML_ERRORS", "load_yaml_file", "load_yaml_text"]

#: the largest config file read (presets and profiles are a few kilobytes)
MAX_BYTES = 1 << 20
#: the deepest nesting of lists and mappings accepted (configs nest two or three levels)
MAX_DEPTH = 50


class RefusedYAML(yaml.MarkedYAMLError):
    """YAML that parses but is refused here (an alias, a merge key, a duplicate, too deep)."""


_CONSTRUCT_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError)

#: what the loaders raise for any YAML they will not return
YAML_ERRORS: tuple[type[BaseException], ...] = (yaml.YAMLError, RecursionError)


def _node_text(node: yaml.Node) -> str:
    """A short description of a node's value for messages (its text for a scalar)."""
    if isinstance(node, yaml.ScalarNode):
        return shown(node.value, 40)
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` without aliases, merge keys or duplicate keys, and with a depth bound."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RefusedYAML(
                None,
                None,
                f"uses the alias *{event.anchor}; aliases are refused (a few lines of them can "
                "expand without bound): write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedYAML(
                    None,
                    None,
                    f"nests lists or mappings more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise RefusedYAML(
                    None,
                    None,
                    "uses a merge key (<<); write the options out",
                    key_node.start_mark,
                )
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: the constructor refuses it (unhashable)
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, value_node)
            except TypeError:
                continue
            if first is not value_node:
                line = first.start_mark.line + 1
                raise RefusedYAML(
                    None,
                    None,
                    f"gives {shown(key, 40)} twice ({_node_text(first)} at line {line}, "
                    f"{_node_text(value_node)} at line {value_node.start_mark.line + 1}); "
                    "keep one",
                    key_node.start_mark,
                )


def load_yaml_text(text: str) -> Any:
    """The value of YAML ``text``, loaded as described in the module docstring."""
    if len(text) > MAX_BYTES:
        raise RefusedYAML(None, None, f"is larger than {MAX_BYTES} bytes", None)
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except _CONSTRUCT_ERRORS as err:
        # PyYAML's constructors fail this way on a value their tag cannot build (``!!int ""``,
        # ``!!timestamp x``); it is the file's fault, so it is a YAML error like the others.
        raise RefusedYAML(
            None, None, f"holds a value its tag cannot build ({type(err).__name__}: {err})", None
        ) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """The value of the YAML file ``path`` (at most :data:`MAX_BYTES`; read as UTF-8)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise RefusedYAML(
            None, None, f"is {size} bytes, larger than a config may be ({MAX_BYTES})", None
        )
    return load_yaml_text(path.read_text(encoding="utf-8"))


def yaml_error_text(err: BaseException) -> str:
    """One line for a YAML failure: what is wrong and where (``is not valid YAML at line 3,
    column 1: ...`` or, for a refusal, ``uses the alias *a at line 2, column 8; ...``)."""
    if isinstance(err, RecursionError):
        return "nests lists or mappings too deeply; flatten it"
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(err, "problem", None) or "syntax error").split())
    if isinstance(err, RefusedYAML):
        head, _, tail = problem.partition(";")
        return f"{head}{where}{';' + tail if tail else ''}"
    return f"is not valid YAML{where}: {problem}"
