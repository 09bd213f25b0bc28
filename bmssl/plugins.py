"""Plugins: modules that register methods, datasets, backbones or search spaces on import.

Imported once, on the first look-up in any registry: the entry points of group ``bmssl.plugins``
(a callable is called, a module is imported), then the modules named in the environment
variable ``BMSSL_PLUGINS`` (comma-separated; worker processes and local Ray workers inherit it).
The substrate names no plugin: BiSSL registers through the entry point that this repository's
``pyproject.toml`` declares, like any other package.

Where the entry points come from: installed metadata, except for this repository's own
distribution when ``bmssl`` runs from a source checkout (editable install, or a checkout on
``PYTHONPATH`` never installed): its ``pyproject.toml`` is then read instead, so an entry point
added or removed there counts at once, and metadata left stale by an older install (or an
``*.egg-info`` folder in the checkout) is ignored.
"""

from __future__ import annotations

import importlib
import os
import re
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TypeVar

from bmssl.errors import UserError

PLUGINS_ENV = "BMSSL_PLUGINS"
ENTRY_POINT_GROUP = "bmssl.plugins"
#: this repository's distribution (``[project] name`` in its pyproject.toml)
DISTRIBUTION = "bmssl-harness"
_loaded: set[str] = set()
T = TypeVar("T")


def add_entry(registry: dict[str, T], name: str, entry: T, what: str, replace: bool = False) -> T:
    """``registry[name] = entry`` for the registries plugins fill (methods, search spaces):
    another entry of that name is refused unless ``replace``; the same one again is a no-op (a
    plugin registers on every import)."""
    if name in registry and not replace and registry[name] != entry:
        raise ValueError(f"a {what} named {name!r} is already registered")
    registry[name] = entry
    return entry


def plugin_modules() -> list[str]:
    """The modules named by ``BMSSL_PLUGINS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _table(text: str, header: str) -> dict[str, str]:
    """``key = "value"`` lines of the TOML table ``[header]`` (the form entry points take;
    for Python 3.10, which has no ``tomllib``)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{header}]"), None)
    table: dict[str, str] = {}
    for line in lines[start + 1 :] if start is not None else []:
        if line.strip().startswith("["):
            break
        match = re.match(r'\s*"?([\w.-]+)"?\s*=\s*"([^"]*)"', line)
        if match:
            table[match.group(1)] = match.group(2)
    return table


def _project(text: str) -> tuple[str, dict[str, str]]:
    """``[project] name`` and the ``bmssl.plugins`` entry points of a pyproject.toml's text."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        group = _table(text, f'project.entry-points."{ENTRY_POINT_GROUP}"')
        return _table(text, "project").get("name", ""), group
    project = tomllib.loads(text).get("project", {})
    group = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    return str(project.get("name", "")), {str(k): str(v) for k, v in group.items()}


def source_entry_points(root: Path | None = None) -> dict[str, str] | None:
    """``{name: "module[:attr]"}`` of group ``bmssl.plugins`` in the ``pyproject.toml`` of the
    checkout ``bmssl`` is imported from (``root``: another checkout), or None when ``bmssl`` is
    not running from a checkout of this distribution (an installed wheel)."""
    pyproject = (root or Path(__file__).resolve().parents[1]) / "pyproject.toml"
    if not pyproject.is_file():
        return None
    name, group = _project(pyproject.read_text(encoding="utf-8"))
    return group if _normalised(name) == DISTRIBUTION else None


def plugin_entry_points() -> list[EntryPoint]:
    """Every entry point of group ``bmssl.plugins``: this distribution's from its
    ``pyproject.toml`` when running from a checkout (see the module docstring), then those of
    every installed distribution but this one."""
    source = source_entry_points()
    found = [EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in (source or {}).items()]
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(entry, "dist", None)
        if source is not None and dist is not None and _normalised(dist.name) == DISTRIBUTION:
            continue  # the checkout's pyproject.toml is the fresher record of the same table
        found.append(entry)
    return found


def _load_entry_point(entry: EntryPoint) -> None:
    try:
        loaded = entry.load()
    except ModuleNotFoundError as err:
        raise UserError(
            f"plugin entry point {entry.name} = {entry.value!r} (group {ENTRY_POINT_GROUP}) "
            f"cannot be imported ({err}); reinstall the package that declares it, or remove it"
        ) from None
    if callable(loaded):
        loaded()


def load_plugins() -> None:
    """Import every plugin not imported yet (a changed ``BMSSL_PLUGINS`` is honoured)."""
    if "entry-points" not in _loaded:
        _loaded.add("entry-points")
        for entry in plugin_entry_points():
            if entry.value not in _loaded:
                _loaded.add(entry.value)
                _load_entry_point(entry)
    for module in plugin_modules():
        if module in _loaded:
            continue
        _loaded.add(module)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            _loaded.discard(module)
            raise UserError(
                f"{PLUGINS_ENV} names module {module!r}, which cannot be imported ({err}); fix "
                "the variable or your PYTHONPATH"
            ) from None
