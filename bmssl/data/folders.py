"""Datasets from a local root: ImageFolder trees (``imagefolder:<path>``) and Hugging Face datasets
saved to disk (``hf:<path>``), plus the layout readers the named local-root sets share.

Layouts read:
- a flat tree ``<path>/<class>/<image>``: the protocol splits it (``fewshot``: contiguous class
  split in sorted class order; ``supervised``: a seeded, per-class 70/10/20 division of the images);
- a split tree ``<path>/{train,val,test}/<class>/<image>`` (``val`` may be named ``valid`` or
  ``validation``); ``<path>`` must hold nothing but split folders;
- ``datasets.save_to_disk`` output: one ``Dataset`` (handled like a flat tree) or a ``DatasetDict``
  (its ``train`` / ``val`` / ``validation`` / ``valid`` / ``test`` members handled like split
  folders; other members are ignored).

Split folders and DatasetDict members are used as given, with two exceptions. The ``fewshot``
protocol needs class-disjoint splits, so when the given splits share classes their images are
pooled and split by class as in a flat tree. A missing ``val`` is carved out of ``train``: its last
20% of classes (``fewshot``) or 10% of each class's images (``supervised``, seeded).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bmssl.data.base import (
    FileImageDataset,
    ImageDataset,
    PILImageDataset,
    SubsetByClass,
    preload_images,
)
from bmssl.data.registry import (
    SPLITS,
    item_split_mask,
    register_dataset,
    require_root,
    split_dataset,
)
from bmssl.errors import DataNotFoundError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
VAL_CLASS_FRACTION = 0.2
VAL_ITEM_FRACTION = 0.1


def visible_entries(directory: Path) -> list[Path]:
    """Entries of ``directory`` not hidden (``.name``, such as macOS ``._x.jpg`` forks), sorted."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def list_images(directory: Path) -> list[Path]:
    """Image files directly under ``directory``, sorted by name."""
    return [
        p
        for p in visible_entries(directory)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def scan_class_folders(directory: Path) -> dict[str, list[Path]]:
    """``{class folder name: its image files}``, classes sorted; folders without images left out."""
    found = {}
    for sub in (p for p in visible_entries(directory) if p.is_dir()):
        files = list_images(sub)
        if files:
            found[sub.name] = files
    return found


def find_split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` is a split tree (a ``train`` folder and only split folders)."""
    subdirs = [p for p in visible_entries(root) if p.is_dir()]
    if not subdirs or any(p.name.lower() not in SPLIT_NAMES for p in subdirs):
        return {}
    folders: dict[str, Path] = {}
    for p in subdirs:
        split = SPLIT_NAMES[p.name.lower()]
        if split in folders:
            raise UserError(
                f"{root} holds two folders for the {split!r} split: {folders[split].name!r} and {p.name!r}"
            )
        folders[split] = p
    return folders if "train" in folders else {}


class LabelledSource:
    """Every image of a local root with global class names, and the split each came from (or ``None``)."""

    def __init__(self, dataset: PILImageDataset, part: Sequence[str] | None, where: str) -> None:
        self.dataset = dataset
        self.part = None if part is None else np.asarray(part)
        self.where = where


def read_image_tree(root: Path, image_size: int, channels: int) -> LabelledSource:
    """A flat or split ImageFolder tree (see the module docstring) as one source."""
    folders = find_split_folders(root) or {"": root}
    per_split = {split: scan_class_folders(folder) for split, folder in folders.items()}
    classes = sorted(set().union(*per_split.values()))
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[int] = []
    part: list[str] = []
    for split, found in per_split.items():
        for name, files in found.items():
            paths += files
            targets += [index[name]] * len(files)
            part += [split] * len(files)
    if not paths:
        raise DataNotFoundError(
            f"no images found under {str(root)!r}: expected <class>/<image> folders (or train/val/test "
            f"folders of them) with files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    dataset = FileImageDataset(paths, targets, classes, image_size=image_size, channels=channels)
    return LabelledSource(dataset, None if "" in folders else part, str(root))


class HFImageDataset(PILImageDataset):
    """Items of one or more Hugging Face ``datasets.Dataset`` tables, decoded one image at a time."""

    def __init__(
        self,
        tables: Sequence[Any],
        image_column: str,
        targets: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        channels: int = 3,
    ) -> None:
        super().__init__(targets, classes, image_size, channels)
        self.tables = [t.select_columns([image_column]) for t in tables]
        self.image_column = image_column
        self._table = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        self._row = (
            np.concatenate([np.arange(len(t)) for t in tables])
            if tables
            else np.zeros(0, dtype=np.int64)
        )
        if len(self._row) != len(self.targets):
            raise ValueError("tables and targets differ in length")

    def open_image(self, index: int) -> Image.Image:
        value = self.tables[int(self._table[index])][int(self._row[index])][self.image_column]
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict):  # an undecoded datasets.Image value
            if value.get("bytes") is not None:
                return Image.open(BytesIO(value["bytes"]))
            return Image.open(value["path"])
        if isinstance(value, (bytes, bytearray)):
            return Image.open(BytesIO(value))
        if isinstance(value, str):
            return Image.open(value)
        return Image.fromarray(np.asarray(value, dtype=np.uint8))


def is_saved_hf_dataset(path: Path) -> bool:
    """Whether ``path`` holds ``datasets.save_to_disk`` output."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_columns(
    table: Any, image_column: str | None, label_column: str | None, where: str
) -> tuple[str, str]:
    import datasets

    features = table.features
    if image_column is None:
        images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
        image_column = (
            images[0]
            if images
            else ("image" if "image" in features else "img" if "img" in features else None)
        )
    if label_column is None:
        labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        label_column = "label" if "label" in features else labels[0] if labels else None
    for kind, column in (("image", image_column), ("label", label_column)):
        if column is None or column not in features:
            raise UserError(
                f"{where}: no {kind} column found among {', '.join(features)}; pass {kind}_column=<name>"
            )
    return image_column, label_column  # type: ignore[return-value]


def read_saved_hf(
    path: Path,
    image_size: int,
    channels: int,
    image_column: str | None = None,
    label_column: str | None = None,
) -> LabelledSource:
    """A ``datasets.save_to_disk`` folder (Dataset or DatasetDict) as one source."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataNotFoundError(f"no Hugging Face dataset saved at {str(path)!r} ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        members = [(SPLIT_NAMES[k.lower()], k) for k in loaded if k.lower() in SPLIT_NAMES]
        if "train" not in {s for s, _ in members}:
            raise UserError(
                f"the DatasetDict at {str(path)!r} has no train split (it has {', '.join(loaded)}); "
                "name the splits train / validation / test"
            )
        if len({s for s, _ in members}) < len(members):
            raise UserError(
                f"the DatasetDict at {str(path)!r} has two members for one split: {', '.join(loaded)}"
            )
        tables = [loaded[k] for _, k in members]
        part: list[str] | None = [s for s, k in members for _ in range(len(loaded[k]))]
    else:
        tables, part = [loaded], None
    image_column, label_column = _pick_columns(tables[0], image_column, label_column, str(path))
    names_per_table = []
    for table in tables:
        if label_column not in table.features:
            raise UserError(f"{path}: a split lacks the label column {label_column!r}")
        feature = table.features[label_column]
        values = list(table[label_column])
        if isinstance(feature, datasets.ClassLabel):
            values = [feature.names[int(v)] for v in values]
        names_per_table.append([str(v) for v in values])
    first = tables[0].features[label_column]
    if isinstance(first, datasets.ClassLabel):  # keep the dataset's own class order
        classes = list(first.names)
        classes += sorted(set().union(*map(set, names_per_table)) - set(classes))
    else:
        classes = sorted(set().union(*map(set, names_per_table)))
    index = {c: i for i, c in enumerate(classes)}
    targets = [index[v] for names in names_per_table for v in names]
    if not targets:
        raise DataNotFoundError(f"the Hugging Face dataset at {str(path)!r} is empty")
    dataset = HFImageDataset(
        tables, image_column, targets, classes, image_size=image_size, channels=channels
    )
    return LabelledSource(dataset, part, str(path))


def _carve_val(part: np.ndarray, targets: np.ndarray, protocol: str) -> np.ndarray:
    """Mark part of ``train`` as ``val`` (last classes for few-shot, some images of each class otherwise)."""
    part = part.astype(object)
    train = part == "train"
    if protocol == "fewshot":
        train_classes = np.unique(targets[train])
        n_val = max(1, int(round(VAL_CLASS_FRACTION * len(train_classes))))
        if n_val >= len(train_classes):
            raise UserError("too few training classes to carve a val split from; add a val folder")
        part[train & np.isin(targets, train_classes[-n_val:])] = "val"
    else:
        val = item_split_mask(
            targets[train], "val", fractions=(1 - VAL_ITEM_FRACTION, VAL_ITEM_FRACTION, 0.0)
        )
        idx = np.nonzero(train)[0]
        part[idx[val]] = "val"
    return part


def split_source(source: LabelledSource, split: str, protocol: str) -> ImageDataset:
    """The ``split`` of a source under ``protocol`` (see the module docstring for the rules)."""
    full = source.dataset
    if source.part is None:
        return split_dataset(full, split, protocol)
    targets = np.asarray(full.targets)
    part = source.part
    if "val" not in set(part.tolist()):
        part = _carve_val(part, targets, protocol)
    classes = {s: set(np.unique(targets[part == s]).tolist()) for s in SPLITS if (part == s).any()}
    if split not in classes:
        raise UserError(
            f"{source.where} has no {split!r} split (found {', '.join(classes)}); add a {split} folder or split"
        )
    if protocol == "fewshot":
        if any(a & b for a, b in itertools.combinations(classes.values(), 2)):
            return split_dataset(full, split, protocol)  # shared classes: pool, then split by class
        return SubsetByClass(full, sorted(classes[split]), item_mask=part == split)
    return SubsetByClass(full, list(range(full.num_classes)), item_mask=part == split)


def finish(dataset: ImageDataset, preload: bool) -> ImageDataset:
    """Decode the split into memory when ``preload`` (fast episodes, costs RAM)."""
    return preload_images(dataset) if preload else dataset


@register_dataset(
    "imagefolder",
    "Pass a folder of <class>/<image> sub-folders, or of train/ val/ test/ folders of those.",
    prefix=True,
)
def imagefolder(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 84,
    channels: int = 3,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Any ImageFolder tree; images resized to ``image_size`` with ``channels`` channels."""
    root = require_root("imagefolder", root)
    if not root.is_dir():
        raise DataNotFoundError(f"imagefolder:{root} is not a folder")
    return finish(
        split_source(read_image_tree(root, image_size, channels), split, protocol), preload
    )


@register_dataset(
    "hf",
    "Save a Hugging Face dataset with datasets' save_to_disk(path) (a Dataset or a DatasetDict) and pass that path.",
    prefix=True,
)
def hf(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 84,
    channels: int = 3,
    image_column: str | None = None,
    label_column: str | None = None,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """A ``datasets`` dataset saved to disk; columns found by feature type unless named."""
    root = require_root("hf", root)
    if not is_saved_hf_dataset(root):
        raise DataNotFoundError(
            f"hf:{root} holds no saved Hugging Face dataset (no dataset_dict.json or state.json); "
            "write one with datasets' save_to_disk(path)"
        )
    source = read_saved_hf(root, image_size, channels, image_column, label_column)
    return finish(split_source(source, split, protocol), preload)
