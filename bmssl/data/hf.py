"""Hugging Face datasets (``hf:<path>`` or ``hf:<hub-name>``), and the reader the named sets share.

``hf:<x>`` is a folder when ``x`` exists (it must hold ``datasets.save_to_disk`` output), else a
Hub dataset name (``owner/name`` or ``name``) loaded by ``datasets.load_dataset`` through its
cache (options ``hub_config``, ``hub_revision``, ``hub_split``, ``cache_dir``); anything else is
refused. With ``HF_DATASETS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) a name not in the cache is one
clear error. Either way the result is read the same:

``datasets.save_to_disk`` output is read as one ``Dataset`` (handled like a flat ImageFolder tree)
or a ``DatasetDict`` (its ``train`` / ``val`` / ``validation`` / ``valid`` / ``test`` members
handled like split folders, see :mod:`bmssl.data.sources`; other members are ignored). Columns
are found by feature type (``datasets.Image``, ``datasets.ClassLabel``) unless named.

``protocol="unlabeled"`` pools every row of every member (an ``unlabeled`` member included), and
needs no label column: rows without a label (no column, or ``-1``) join one class ``unlabeled``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bmssl.data.base import ImageDataset, PILImageDataset
from bmssl.data.folders import SPLIT_NAMES, UNLABELED
from bmssl.data.images import skip_corrupt_requested
from bmssl.data.registry import register_dataset
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


def _members(loaded: Any, where: str, pool: bool) -> tuple[list[Any], list[str] | None]:
    """The tables to read and the split of each row (``None``: one table, or pooled)."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return [loaded], None
    if pool:
        return list(loaded.values()), None
    members = [(SPLIT_NAMES[k.lower()], k) for k in loaded if k.lower() in SPLIT_NAMES]
    if "train" not in {s for s, _ in members}:
        raise UserError(
            f"the DatasetDict {where} has no train split (it has {', '.join(loaded)}); "
            "name the splits train / validation / test"
        )
    if len({s for s, _ in members}) < len(members):
        raise UserError(
            f"the DatasetDict {where} has two members for one split: {', '.join(loaded)}"
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
        raise UserError(
            f"the Hugging Face dataset saved at {str(path)!r} is damaged ({_first_line(err)}); "
            "save it again with save_to_disk or point at another folder"
        ) from None
    return _source(
        loaded,
        str(path),
        f"at {str(path)!r}",
        image_size,
        channels,
        image_column,
        label_column,
        pool,
    )


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _source(
    loaded: Any,
    where: str,
    phrase: str,
    image_size: int,
    channels: int,
    image_column: str | None,
    label_column: str | None,
    pool: bool,
) -> LabelledSource:
    """A loaded Dataset or DatasetDict as one source (``where`` names it in messages,
    ``phrase`` is ``where`` within a sentence)."""
    import datasets

    tables, part = _members(loaded, phrase, pool)
    columns = [
        _pick_columns(t, image_column, label_column, where, need_label=not pool) for t in tables
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
        raise DataNotFoundError(f"the Hugging Face dataset {phrase} is empty")
    dataset = HFImageDataset(
        tables, [image for image, _ in columns], targets, classes, image_size, channels, where
    )
    return LabelledSource(dataset, part, where)


# ------------------------------------------------------------------------------- Hub names

# A Hub repository id: ``name`` or ``owner/name``, each part letters, digits, ``-``, ``_``, ``.``
# (not first or last), at most 96 characters, no ``--`` or ``..`` (huggingface_hub's rules).
_HUB_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}", re.ASCII)
# Libraries whose exceptions mean "the network failed" / "the Hub or the cache refused".
NETWORK_LIBRARIES = frozenset({"requests", "urllib3", "httpx", "httpcore", "aiohttp"})
HF_LIBRARIES = frozenset({"datasets", "huggingface_hub", "fsspec"})


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hugging Face Hub dataset id (``owner/name`` or ``name``)."""
    return bool(HUB_ID.fullmatch(text)) and "--" not in text and ".." not in text


def _offline() -> bool:
    import datasets

    # datasets reads HF_DATASETS_OFFLINE / HF_HUB_OFFLINE into its config when imported.
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def load_hub_dataset(
    name: str,
    hub_config: str | None = None,
    hub_revision: str | None = None,
    hub_split: str | None = None,
    cache_dir: str | None = None,
) -> Any:
    """``datasets.load_dataset(name, ...)``, through its cache, each way of failing one clear error.

    Every split is loaded unless ``hub_split`` names one (``"train"``, ``"train[:10%]"``): the
    harness's split rules need the dataset's own train / validation / test members together.
    """
    import datasets

    shown = f"hf:{name}" + (f" (config {hub_config!r})" if hub_config else "")
    try:
        return datasets.load_dataset(
            name, name=hub_config, split=hub_split, revision=hub_revision, cache_dir=cache_dir
        )
    except Exception as err:
        mapped = _hub_error(err, name, shown)
        if mapped is None:  # not a failure we can explain: keep the traceback
            raise
        raise mapped from None


def _hub_error(err: Exception, name: str, shown: str) -> UserError | None:
    """The one-line error for a failed ``load_dataset`` (``None``: unknown, maybe a bug)."""
    library = type(err).__module__.split(".")[0]
    network = isinstance(err, ConnectionError) or library in NETWORK_LIBRARIES
    if _offline() and (network or isinstance(err, FileNotFoundError)):
        return DataNotFoundError(
            f"{shown}: not in the Hugging Face datasets cache, and offline mode is on "
            "(HF_DATASETS_OFFLINE or HF_HUB_OFFLINE): run once with network access and those "
            "unset to cache it, or point HF_HOME (or cache_dir=) at a cache that holds it"
        )
    if isinstance(err, FileNotFoundError):  # datasets' DatasetNotFoundError among them
        return DataNotFoundError(
            f"{shown}: no local folder of that name, and no dataset {name!r} on the Hugging "
            "Face Hub that this machine may read (private and gated sets need `hf auth login` "
            "or HF_TOKEN); pass a folder written by save_to_disk or a Hub name such as owner/name"
        )
    if network:
        return UserError(
            f"{shown}: cannot reach the Hugging Face Hub ({_first_line(err)}); check the "
            "network, or set HF_DATASETS_OFFLINE=1 to use a dataset already cached"
        )
    if isinstance(err, (ValueError, OSError)) or library in HF_LIBRARIES:
        # an unknown config, revision or split, a damaged cache, a refused download
        return UserError(f"{shown}: datasets.load_dataset failed: {_first_line(err)}")
    return None


def read_hub(
    name: str,
    image_size: int,
    channels: int,
    image_column: str | None = None,
    label_column: str | None = None,
    pool: bool = False,
    **hub_options: Any,
) -> LabelledSource:
    """A Hub dataset (all its splits, or ``hub_split``) as one source, read like a saved one."""
    import datasets

    loaded = load_hub_dataset(name, **hub_options)
    if not isinstance(loaded, (datasets.Dataset, datasets.DatasetDict)):
        raise UserError(
            f"hf:{name}: datasets.load_dataset gave a {type(loaded).__name__}, not a Dataset or "
            "DatasetDict; streaming datasets are not supported"
        )
    where = f"hf:{name}"
    return _source(
        loaded, where, repr(where), image_size, channels, image_column, label_column, pool
    )


@register_dataset(
    "hf",
    "Pass hf:<folder> for a Hugging Face dataset written by datasets' save_to_disk(folder) (a "
    "Dataset or a DatasetDict), or hf:<owner>/<name> for a Hub dataset, which datasets downloads "
    "once into its cache (HF_HOME); offline (HF_DATASETS_OFFLINE=1) it must be cached already.",
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
    hub_config: str | None = None,
    hub_revision: str | None = None,
    hub_split: str | None = None,
    cache_dir: str | None = None,
    **_: Any,
) -> ImageDataset:
    """A ``datasets`` dataset saved to disk, or a Hub dataset by name; columns found by feature
    type unless named. An existing path is always read as a folder (a Hub name that is also a
    folder here is the folder: run elsewhere or give the folder another name)."""
    if root is None:
        raise DataNotFoundError("hf: needs a folder or a Hub dataset name after 'hf:'")
    pool = protocol == "unlabeled"
    hub_options = {
        "hub_config": hub_config,
        "hub_revision": hub_revision,
        "hub_split": hub_split,
        "cache_dir": cache_dir,
    }
    if root.exists():
        given = [k for k, v in hub_options.items() if v is not None]
        if given:
            raise UserError(
                f"hf:{root} is a local folder; {', '.join(given)} apply only to Hub names: drop "
                f"{'it' if len(given) == 1 else 'them'}"
            )
        if not is_saved_hf_dataset(root):
            also = (
                f" (a local folder wins over the Hub dataset {str(root)!r}: to load that, run "
                "from a directory without this folder)"
                if is_hub_id(str(root))
                else ""
            )
            raise DataNotFoundError(
                f"hf:{root} holds no saved Hugging Face dataset (no dataset_dict.json or "
                f"state.json); write one with datasets' save_to_disk(path){also}"
            )
        source = read_saved_hf(root, image_size, channels, image_column, label_column, pool)
    elif is_hub_id(str(root)):
        source = read_hub(
            str(root), image_size, channels, image_column, label_column, pool, **hub_options
        )
    else:
        raise DataNotFoundError(
            f"dataset 'hf' not found at {str(root)!r}: no such folder, and not a Hugging Face "
            "Hub dataset name (owner/name); pass a folder written by datasets' save_to_disk or "
            "a Hub name"
        )
    return finish_source(source, split, protocol, skip_corrupt or skip_corrupt_requested(), preload)
