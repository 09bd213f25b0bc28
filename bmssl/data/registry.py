"""Dataset registry: ``get_dataset(name, root=None, split="train", protocol="fewshot")``.

Two protocols:
- ``fewshot``: class-disjoint ``train`` / ``val`` / ``test`` splits (meta-training on train
  classes, few-shot evaluation on held-out classes);
- ``supervised``: every class in every split, images divided (downstream tasks, BiSSL).

Names: the registered ones (``list_datasets()``), plus ``imagefolder:<path>`` and ``hf:<path>``
for any ImageFolder tree or Hugging Face dataset saved to disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bmssl.data.base import ImageDataset, SubsetByClass
from bmssl.errors import DataNotFoundError, UserError, check_choice

SPLITS = ("train", "val", "test")
PROTOCOLS = ("fewshot", "supervised")


class DatasetFactory(Protocol):
    def __call__(
        self, root: Path | None, split: str, protocol: str, **options: Any
    ) -> ImageDataset: ...


_REGISTRY: dict[str, DatasetFactory] = {}
_PREFIXES: dict[str, DatasetFactory] = {}
_HELP: dict[str, str] = {}


def register_dataset(
    name: str, how_to_get: str = "", prefix: bool = False
) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a factory under ``name`` (or under ``name:<path>`` when ``prefix``)."""

    def decorate(factory: DatasetFactory) -> DatasetFactory:
        (_PREFIXES if prefix else _REGISTRY)[name] = factory
        _HELP[name] = how_to_get
        return factory

    return decorate


def list_datasets() -> list[str]:
    """Registered names, prefixes shown as ``prefix:<path>``."""
    _load_builtin()
    return sorted(_REGISTRY) + [f"{p}:<path>" for p in sorted(_PREFIXES)]


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
    root_path = Path(root).expanduser() if root is not None else None
    if ":" in name:
        prefix, path = name.split(":", 1)
        if prefix not in _PREFIXES:
            raise UserError(
                f"unknown dataset prefix {prefix!r} in {name!r}; known: {', '.join(sorted(_PREFIXES))}"
            )
        if not path:
            raise UserError(f"dataset {name!r} needs a path after '{prefix}:'")
        return _PREFIXES[prefix](Path(path).expanduser(), split, protocol, **options)
    if name not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    return _REGISTRY[name](root_path, split, protocol, **options)


def require_root(name: str, root: Path | None, must_contain: tuple[str, ...] = ()) -> Path:
    """Check a local dataset root exists (and holds ``must_contain``); else one clear error."""
    how = _HELP.get(name, "")
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} needs a local root: pass root=... (--data-root). {how}".strip()
        )
    missing = [m for m in must_contain if not (root / m).exists()]
    if not root.exists() or missing:
        tried = root if not missing else root / missing[0]
        raise DataNotFoundError(f"dataset {name!r} not found at {str(tried)!r}. {how}".strip())
    return root


def class_split(
    num_classes: int, split: str, fractions: tuple[float, float, float] = (0.64, 0.16, 0.20)
) -> list[int]:
    """Contiguous class-disjoint split by fractions (train/val/test) over classes ``0..n-1``."""
    n_train = int(round(fractions[0] * num_classes))
    n_val = int(round(fractions[1] * num_classes))
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, num_classes),
    }
    lo, hi = bounds[split]
    return list(range(lo, hi))


def item_split_mask(
    targets: list[int] | np.ndarray,
    split: str,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask of the items in ``split``, stratified per class and seeded (supervised protocol)."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    which = np.empty(len(targets), dtype=np.int64)
    for c in np.unique(targets):
        idx = np.nonzero(targets == c)[0]
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        which[idx[:n_train]] = 0
        which[idx[n_train : n_train + n_val]] = 1
        which[idx[n_train + n_val :]] = 2
    return which == SPLITS.index(split)


def split_dataset(
    full: ImageDataset,
    split: str,
    protocol: str,
    class_fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    item_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> ImageDataset:
    """Apply the protocol's split to a dataset holding every class and image."""
    if protocol == "fewshot":
        return SubsetByClass(full, class_split(full.num_classes, split, class_fractions))
    mask = item_split_mask(full.targets, split, item_fractions)
    return SubsetByClass(full, list(range(full.num_classes)), item_mask=mask)


_LOADED = False


def _load_builtin() -> None:
    """Import the modules whose decorators fill the registry (once, lazily)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for module in ("offline", "fewshot_sets", "folders", "downstream"):
        try:
            importlib.import_module(f"bmssl.data.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"bmssl.data.{module}":
                raise
