"""What every downstream loader shares: its options, registration, root checks and split tail.

A loader is ``load(root, request, **own_options)`` decorated with :func:`downstream_set`, which
registers it with its how-to-get text and turns ``get_dataset``'s common options into one
:class:`Request`. The loader returns :class:`Parts` (every image of the set and the official part
of each, ``train`` / ``val`` / ``test``), and the shared tail does the rest: the protocol's split
(:func:`split_parts`, carving ``val`` out of ``train`` when the set has none) and ``preload``.
A loader that must split by itself (VOC 2007 reads only the image set a split needs) returns the
finished split instead, and the tail only preloads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from bmssl.data.base import (
    FileImageDataset,
    ImageDataset,
    SubsetByClass,
    drop_unreadable,
    preload_if,
)
from bmssl.data.registry import how_to_get, register_dataset, require_root
from bmssl.data.splitting import carve_val, split_dataset
from bmssl.errors import DataNotFoundError, UserError

FILE_IMAGE_SIZE = 224
VAL_FRACTION = 0.1
T = TypeVar("T")
NAMES: list[str] = []  # every downstream set, in registration order


@dataclass(frozen=True)
class Request:
    """A split asked of a downstream set, with the options every set takes."""

    name: str
    split: str
    protocol: str
    image_size: int
    val_fraction: float = VAL_FRACTION  # of train carved as val, for sets without an official val
    seed: int = 0  # of that carving
    preload: bool = False  # decode a file-backed split into memory once
    skip_corrupt: bool = False  # leave out undecodable image files, checked while building

    def missing(self, path: Path, what: str = "not found at") -> DataNotFoundError:
        """The error for a part of the set missing at ``path``, with the how-to-get text."""
        return DataNotFoundError(f"dataset {self.name!r} {what} {str(path)!r}. {self.help}")

    def error(self, what: str) -> DataNotFoundError:
        """The error for a set whose data is incomplete or malformed (``what`` says how)."""
        return DataNotFoundError(f"dataset {self.name!r}: {what}. {self.help}")

    @property
    def help(self) -> str:
        return how_to_get(self.name)


class Parts(NamedTuple):
    """Every image of a set, and the official part of each (``None``: no official split)."""

    dataset: ImageDataset
    part: Sequence[str] | np.ndarray | None


class Loader(Protocol):
    def __call__(
        self, root: Path | None, request: Request, **options: Any
    ) -> Parts | ImageDataset: ...


def downstream_set(
    name: str, how_to_get: str, image_size: int = FILE_IMAGE_SIZE, fewshot: bool = True
) -> Callable[[Loader], Loader]:
    """Register ``load`` under ``name``: ``get_dataset`` then runs it and the shared tail.

    ``image_size`` is the set's default; ``fewshot=False`` marks a supervised-only set (too few
    classes, or multi-label, for class-disjoint few-shot splits).
    """

    def decorate(load: Loader) -> Loader:
        def factory(
            root: Path | None,
            split: str,
            protocol: str,
            image_size: int = image_size,
            val_fraction: float = VAL_FRACTION,
            seed: int = 0,
            preload: bool = False,
            skip_corrupt: bool = False,
            **options: Any,
        ) -> ImageDataset:
            if protocol == "fewshot" and not fewshot:
                raise UserError(
                    f"dataset {name!r} is supervised-only (too few classes, or multi-label, for "
                    "class-disjoint few-shot splits); pass protocol='supervised'"
                )
            request = Request(
                name, split, protocol, image_size, val_fraction, seed, preload, skip_corrupt
            )
            loaded = load(root, request, **options)
            if not isinstance(loaded, ImageDataset):
                loaded = split_parts(request, *loaded)
            return preload_if(loaded, preload)

        register_dataset(name, how_to_get)(factory)
        NAMES.append(name)
        return load

    return decorate


def split_parts(
    request: Request, full: ImageDataset, part: Sequence[str] | np.ndarray | None
) -> ImageDataset:
    """The requested split of ``full``, whose items carry the official ``part``.

    Few-shot pools every item and splits by class, unlabeled pools every item, and a set without
    official parts gets the registry's seeded 70/10/20; supervised keeps the official parts,
    carving ``val`` out of ``train`` when the set has none.
    """
    if part is None or request.protocol != "supervised":
        return split_dataset(full, request.split, request.protocol)
    official = np.asarray(part, dtype=object)
    if not (official == "val").any():
        official = carve_val(full.targets, official, request.val_fraction, request.seed)
    mask = official == request.split
    if not mask.any():
        raise request.error(f"it has no {request.split!r} images")
    return SubsetByClass(full, list(range(full.num_classes)), item_mask=mask)


def locate(request: Request, root: Path | None, inner: str, required: Sequence[str]) -> Path:
    """The folder ``F`` with every ``F/inner/<required>``: ``root`` itself, or the folder above
    ``root`` when ``root`` already is ``inner`` (users often pass the extracted folder).

    Otherwise one clear error naming the first part missing under ``root``.
    """
    root = require_root(request.name, root)
    depth = len(Path(inner).parts)
    candidates = [root]
    if root.parts[-depth:] == Path(inner).parts and len(root.parts) > depth:
        candidates.append(root.parents[depth - 1])
    for outer in candidates:
        if all((outer / inner / part).exists() for part in required):
            return outer
    first = next(part for part in required if not (root / inner / part).exists())
    raise request.missing(root / inner / first)


def image_files(
    request: Request,
    paths: Sequence[Path],
    targets: Sequence[int],
    classes: Sequence[str],
    part: Sequence[str] | np.ndarray | None,
) -> Parts:
    """Every image of a set as one dataset, after a spot check that the listed files exist
    (and, with ``skip_corrupt``, without the files that cannot be decoded)."""
    if not paths:
        raise request.error("its lists name no images")
    for p in list(paths[:: max(1, len(paths) // 20)]) + [paths[-1]]:  # a full stat is slow
        if not Path(p).is_file():
            raise request.missing(Path(p), "lists an image missing at")
    bad = [t for t in targets if not 0 <= t < len(classes)]
    if bad:
        raise request.error(f"label {bad[0]} outside its {len(classes)} classes")
    dataset = FileImageDataset(paths, targets, classes, image_size=request.image_size)
    from bmssl.data.images import skip_corrupt_requested

    if request.skip_corrupt or skip_corrupt_requested():
        return Parts(*drop_unreadable(dataset, part, f"dataset {request.name!r}"))
    return Parts(dataset, part)


def torchvision_set(request: Request, where: Path, cls: Callable[..., T], **kwargs: Any) -> T:
    """``cls(where, download=False, **kwargs)``; torchvision's bare "Dataset not found" becomes
    our error with the path and the how-to."""
    try:
        return cls(where, download=False, **kwargs)
    except (RuntimeError, FileNotFoundError) as err:
        raise DataNotFoundError(
            f"dataset {request.name!r} at {str(where)!r} is incomplete ({err}). {request.help}"
        ) from None


def file_listing(name: str, dataset: Any) -> tuple[list[Path], list[int]]:
    """(image paths, labels) of a torchvision dataset, without decoding an image.

    torchvision keeps these lists in private attributes (``_image_files`` or ``_images`` with
    ``_labels``, or ``_samples`` pairs) and has no public accessor; a torchvision that renames
    them gets this clear error rather than an AttributeError deep inside a loader.
    """
    if hasattr(dataset, "_samples"):
        pairs = list(dataset._samples)
        return [Path(p) for p, _ in pairs], [int(t) for _, t in pairs]
    for files in ("_image_files", "_images"):
        if hasattr(dataset, files) and hasattr(dataset, "_labels"):
            return [Path(p) for p in getattr(dataset, files)], [int(t) for t in dataset._labels]
    import torchvision

    raise UserError(
        f"dataset {name!r}: torchvision {torchvision.__version__}'s {type(dataset).__name__} keeps "
        "its file list under names this loader does not know (it reads _image_files/_images with "
        "_labels, or _samples, as torchvision 0.19-0.29 do); install torchvision 0.29 or older"
    )


def gather(
    name: str,
    parts: dict[str, Any],
    relabel: Callable[[Any, int], int] | None = None,
    part_names: dict[str, str] | None = None,
) -> tuple[list[Path], list[int], list[str]]:
    """Paths, labels and official part of every image of torchvision's per-split datasets.

    ``relabel(dataset, label)`` maps a split's own class numbering to a global one;
    ``part_names`` renames splits (e.g. ``trainval`` -> ``train``).
    """
    paths: list[Path] = []
    targets: list[int] = []
    part: list[str] = []
    for split, dataset in parts.items():
        files, labels = file_listing(name, dataset)
        paths += files
        targets += [relabel(dataset, t) for t in labels] if relabel else labels
        part += [(part_names or {}).get(split, split)] * len(labels)
    return paths, targets, part


def check_partition(partition: int) -> None:
    """DTD and SUN397 ship ten official partitions, numbered 1 to 10."""
    if partition not in range(1, 11):
        raise UserError(f"partition must be an integer from 1 to 10, got {partition!r}")
