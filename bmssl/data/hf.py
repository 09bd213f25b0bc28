"""Hugging Face datasets saved to disk (``hf:<path>``), and the reader the named sets share.

``datasets.save_to_disk`` output is read as one ``Dataset`` (handled like a flat ImageFolder tree)
or a ``DatasetDict`` (its ``train`` / ``val`` / ``validation`` / ``valid`` / ``test`` members
handled like split folders, see :mod:`bmssl.data.sources`; other members are ignored). Columns
are found by feature type (``datasets.Image``, ``datasets.ClassLabel``) unless named.

``protocol="unlabeled"`` pools every row of every member (an ``unlabeled`` member included), and
needs no label column: rows without a label (no column, or ``-1``) join one class ``unlabeled``.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bmssl.data.base import ImageDataset, PILImageDataset
from bmssl.data.folders import SPLIT_NAMES, UNLABELED
from bmssl.data.registry import register_dataset, require_root
from bmssl.data.sources import LabelledSource, finish_source
from bmssl.errors import DataNotFoundError, UserError


class HFImageDataset(PILImageDataset):
    """Items of one or more Hugging Face ``datasets.Dataset`` tables, decoded one image at a time."""

    def __init__(
        self,
        tables: Sequence[Any],
        image_columns: Sequence[str],
        targets: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        channels: int = 3,
        where: str = "the Hugging Face dataset",
    ) -> None:
        super().__init__(targets, classes, image_size, channels)
        # One image column per table: pooled members may name it differently.
        self.tables = [t.select_columns([c]) for t, c in zip(tables, image_columns, strict=True)]
        self.image_columns = list(image_columns)
        self.where = where
        self._table = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
        self._row = (
            np.concatenate([np.arange(len(t)) for t in tables])
            if tables
            else np.zeros(0, dtype=np.int64)
        )
        if len(self._row) != len(self.targets):
            raise ValueError("tables and targets differ in length")

    def open_image(self, index: int) -> Image.Image:
        table = int(self._table[index])
        value = self.tables[table][int(self._row[index])][self.image_columns[table]]
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

    def describe(self, index: int) -> str:
        return f"row {int(self._row[index])} of table {int(self._table[index])} of {self.where!r}"

    def _keep_items(self, indices: np.ndarray) -> None:
        self._table, self._row = self._table[indices], self._row[indices]


def is_saved_hf_dataset(path: Path) -> bool:
    """Whether ``path`` holds ``datasets.save_to_disk`` output."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_columns(
    table: Any, image_column: str | None, label_column: str | None, where: str, need_label: bool
) -> tuple[str, str | None]:
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
    needed = [("image", image_column)] + ([("label", label_column)] if need_label else [])
    for kind, column in needed:
        if column is None or column not in features:
            raise UserError(
                f"{where}: no {kind} column found among {', '.join(features)}; pass {kind}_column=<name>"
            )
    return image_column, label_column  # type: ignore[return-value]


def _members(loaded: Any, path: Path, pool: bool) -> tuple[list[Any], list[str] | None]:
    """The tables to read and the split of each row (``None``: one table, or pooled)."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return [loaded], None
    if pool:
        return list(loaded.values()), None
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
    return [loaded[k] for _, k in members], [s for s, k in members for _ in range(len(loaded[k]))]


def _label_names(table: Any, column: str | None) -> list[str]:
    """Each row's class name; ``unlabeled`` for rows without one (pooled reading only: the
    labelled protocols need a label column in every table, see :func:`_pick_columns`)."""
    import datasets

    if column is None or column not in table.features:
        return [UNLABELED] * len(table)
    feature = table.features[column]
    values = list(table[column])
    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[int(v)] if int(v) >= 0 else UNLABELED for v in values]
    return [str(v) for v in values]


def read_saved_hf(
    path: Path,
    image_size: int,
    channels: int,
    image_column: str | None = None,
    label_column: str | None = None,
    pool: bool = False,
) -> LabelledSource:
    """A ``datasets.save_to_disk`` folder (Dataset or DatasetDict) as one source.

    ``pool`` (the unlabeled protocol) reads every member and accepts rows without labels.
    """
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataNotFoundError(f"no Hugging Face dataset saved at {str(path)!r} ({err})") from None
    except (ValueError, KeyError, TypeError, OSError) as err:  # damaged metadata or arrow files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"the Hugging Face dataset saved at {str(path)!r} is damaged ({reason}); save it "
            "again with save_to_disk or point at another folder"
        ) from None
    tables, part = _members(loaded, path, pool)
    columns = [
        _pick_columns(t, image_column, label_column, str(path), need_label=not pool) for t in tables
    ]
    names_per_table = [_label_names(t, label) for t, (_, label) in zip(tables, columns)]
    first = tables[0].features.get(columns[0][1]) if columns[0][1] else None
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
        tables, [image for image, _ in columns], targets, classes, image_size, channels, str(path)
    )
    return LabelledSource(dataset, part, str(path))


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
    skip_corrupt: bool = False,
    **_: Any,
) -> ImageDataset:
    """A ``datasets`` dataset saved to disk; columns found by feature type unless named."""
    root = require_root("hf", root)
    if not is_saved_hf_dataset(root):
        raise DataNotFoundError(
            f"hf:{root} holds no saved Hugging Face dataset (no dataset_dict.json or state.json); "
            "write one with datasets' save_to_disk(path)"
        )
    pool = protocol == "unlabeled"
    source = read_saved_hf(root, image_size, channels, image_column, label_column, pool)
    return finish_source(source, split, protocol, skip_corrupt, preload)
