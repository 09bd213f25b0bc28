"""Dataset registry: ``get_dataset(name, root=None, split="train", protocol="fewshot")``.

Three protocols (see :mod:`bmssl.data.splitting`):
- ``fewshot``: class-disjoint ``train`` / ``val`` / ``test`` splits (meta-training on train
  classes, few-shot evaluation on held-out classes);
- ``supervised``: every class in every split, images divided (downstream tasks, BiSSL);
- ``unlabeled``: every image of the source as one pool (self-supervised pretext data), asked for
  as ``split="train"``.

Names: the registered ones (``list_datasets()``), plus ``imagefolder:<path>`` and ``hf:<path>``
for any ImageFolder tree or Hugging Face dataset saved to disk.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from bmssl.data.base import ImageDataset
from bmssl.data.splitting import (  # re-exported: callers long imported them from here
    PROTOCOLS,
    SPLITS,
    class_split,
    item_split_mask,
    split_dataset,
)
from bmssl.errors import DataNotFoundError, UserError, check_choice

__all__ = [
    "PROTOCOLS",
    "SPLITS",
    "DatasetFactory",
    "class_split",
    "get_dataset",
    "how_to_get",
    "item_split_mask",
    "list_datasets",
    "register_dataset",
    "require_root",
    "split_dataset",
]


class DatasetFactory(Protocol):
    def __call__(
        self, root: Path | None, split: str, protocol: str, **options: Any
    ) -> ImageDataset: ...


#: how the running command takes a dataset's root, in the missing-root message: the option of a
#: method's config by default; the table drivers set their own flags
ROOT_HINT: ContextVar[str] = ContextVar("root_hint", default="set data_root=PATH")

_REGISTRY: dict[str, DatasetFactory] = {}
_PREFIXES: dict[str, DatasetFactory] = {}
_HELP: dict[str, str] = {}


def register_dataset(
    name: str, how_to_get: str = "", prefix: bool = False
) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a factory under ``name`` (or under ``name:<path>`` when ``prefix``).

    ``how_to_get`` says how to obtain the data; every missing-root error of the set ends with it.
    """

    def decorate(factory: DatasetFactory) -> DatasetFactory:
        (_PREFIXES if prefix else _REGISTRY)[name] = factory
        _HELP[name] = how_to_get
        return factory

    return decorate


def how_to_get(name: str) -> str:
    """The registered how-to-get text of ``name`` (``""`` when it has none)."""
    _load_builtin()
    return _HELP.get(name, "")


def list_datasets() -> list[str]:
    """Registered names, prefixes shown as ``prefix:<path>``."""
    _load_builtin()
    return sorted(_REGISTRY) + [f"{p}:<path>" for p in sorted(_PREFIXES)]


#: How a path says it is one: ``hf:./name`` is a folder here, never the Hub dataset ``name``.
EXPLICIT_RELATIVE = ("./", "../", ".\\", "..\\")


def get_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    protocol: str = "fewshot",
    **options: Any,
) -> ImageDataset:
    """Build a dataset split. Unknown names, splits or protocols raise :class:`UserError`."""
    _load_builtin()
    check_choice("split", split, SPLITS)
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "unlabeled" and split != "train":
        raise UserError(
            f"protocol 'unlabeled' gives one pool of every image, asked for as split='train'; "
            f"got split={split!r}"
        )
    root_path = Path(root).expanduser() if root is not None else None
    if ":" in name:
        prefix, path = name.split(":", 1)
        if prefix not in _PREFIXES:
            raise UserError(
                f"unknown dataset prefix {prefix!r} in {name!r}; known: {', '.join(sorted(_PREFIXES))}"
            )
        if not path:
            raise UserError(f"dataset {name!r} needs a path after '{prefix}:'")
        target = Path(path).expanduser()
        if path.startswith(EXPLICIT_RELATIVE):
            # Path("./x") is Path("x"): keep the user's "this is a path" (never a Hub name).
            target = target.absolute()
        return _PREFIXES[prefix](target, split, protocol, **options)
    if name not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    return _REGISTRY[name](root_path, split, protocol, **options)


def require_root(name: str, root: Path | None, must_contain: tuple[str, ...] = ()) -> Path:
    """Check a local dataset root exists (and holds ``must_contain``); else one clear error."""
    how = _HELP.get(name, "")
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} needs a local root: {ROOT_HINT.get().format(name=name)}. {how}".strip()
        )
    missing = [m for m in must_contain if not (root / m).exists()]
    if not root.exists() or missing:
        tried = root if not missing else root / missing[0]
        raise DataNotFoundError(f"dataset {name!r} not found at {str(tried)!r}. {how}".strip())
    return root


_LOADED = False


def _load_builtin() -> None:
    """Import the modules whose decorators fill the registry (once, lazily), and the plugins."""
    global _LOADED
    from bmssl.plugins import load_plugins

    load_plugins()
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for module in ("offline", "fewshot_sets", "folders", "hf", "downstream", "crossdomain"):
        try:
            importlib.import_module(f"bmssl.data.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"bmssl.data.{module}":
                raise
