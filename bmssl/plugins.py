"""Plugins: modules outside the packages that register methods, datasets or backbones.

Imported once, on the first look-up in any registry: the built-in plugin ``bissl.methods`` (if
the package is present), the modules named in the environment variable ``BMSSL_PLUGINS``
(comma-separated; worker processes and local Ray workers inherit it) and the entry points of
group ``bmssl.plugins`` (a callable is called, a module is imported).
"""

from __future__ import annotations

import importlib
import os

from bmssl.errors import UserError

PLUGINS_ENV = "BMSSL_PLUGINS"
ENTRY_POINT_GROUP = "bmssl.plugins"
#: packages of this repository that register methods (imported only if present)
BUILTIN_PLUGINS = ("bissl.methods",)
_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """The modules named by ``BMSSL_PLUGINS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def load_plugins() -> None:
    """Import every plugin not imported yet (a changed ``BMSSL_PLUGINS`` is honoured)."""
    for module in BUILTIN_PLUGINS:
        if module not in _loaded:
            _loaded.add(module)
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                if not (err.name and module.startswith(err.name)):
                    raise
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
    if "entry-points" not in _loaded:
        _loaded.add("entry-points")
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            loaded = entry.load()
            if callable(loaded):
                loaded()
