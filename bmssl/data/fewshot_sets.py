"""The few-shot benchmarks, read from a local root: Omniglot, miniImageNet and CIFAR-FS.

Nothing is downloaded here; a missing or incomplete root raises :class:`DataNotFoundError` with
the path tried and how to get the data. Class splits:

- ``omniglot``: the 1,623 characters in torchvision's order (background alphabets, then evaluation
  alphabets, each sorted by name), cut into 1,100 train / 100 val / 423 test characters — the
  sizes of the unsupervised meta-learning papers (CACTUs, UMTRA), no rotated copies.
- ``miniimagenet``: the 64 / 16 / 20 classes of Ravi & Larochelle (2017), ``splits/miniimagenet_*.txt``;
  its root may also be learn2learn's pickle cache (``mini-imagenet-cache-{train,validation,test}.pkl``),
  read without running code from the files (:mod:`bmssl.data.safe_pickle`).
- ``cifarfs``: the 64 / 16 / 20 CIFAR-100 classes of Bertinetto et al. (2019), ``splits/cifarfs_*.txt``.

The ``supervised`` protocol keeps every class and divides each class's images 70/10/20 (seeded);
``unlabeled`` pools every image of the root (classes outside the lists included).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bmssl.data.base import (
    FileImageDataset,
    ImageDataset,
    SubsetByClass,
    TensorImageDataset,
    preload_if,
    preload_images,
)
from bmssl.data.downstream.arrays import CIFAR100, CIFAR_READ_ERRORS, read_cifar
from bmssl.data.folders import (
    find_split_folders,
    list_images,
    read_image_tree,
    scan_class_folders,
    visible_entries,
)
from bmssl.data.hf import is_saved_hf_dataset, read_saved_hf
from bmssl.data.registry import register_dataset, require_root
from bmssl.data.safe_pickle import load_data_pickle
from bmssl.data.sources import LabelledSource
from bmssl.data.splitting import SPLITS, split_dataset
from bmssl.errors import DataNotFoundError, UserError

OMNIGLOT_SPLIT_SIZES = (1100, 100, 423)


def split_classes(name: str, split: str) -> list[str]:
    """Class names of one split from ``bmssl/data/splits/<name>_<split>.txt`` (``#`` lines are comments)."""
    text = resources.files("bmssl.data").joinpath("splits", f"{name}_{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def select_classes(
    full: ImageDataset, wanted: list[str], dataset: str, where: str
) -> SubsetByClass:
    """The items of ``full`` whose class is in ``wanted``, labelled in ``wanted``'s order."""
    index = {c: i for i, c in enumerate(full.classes)}
    missing = [c for c in wanted if c not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DataNotFoundError(
            f"dataset {dataset!r} at {where!r} lacks {len(missing)} of the {len(wanted)} classes needed: {shown}"
        )
    return SubsetByClass(full, [index[c] for c in wanted])


def _split_by_lists(
    full: ImageDataset, name: str, split: str, protocol: str, where: str
) -> ImageDataset:
    """Few-shot: the split's listed classes; supervised: all listed classes, images divided;
    unlabeled: every image of the source, listed or not."""
    if protocol == "unlabeled":
        return split_dataset(full, split, protocol)
    if protocol == "fewshot":
        return select_classes(full, split_classes(name, split), name, where)
    every = [c for s in SPLITS for c in split_classes(name, s)]
    return split_dataset(select_classes(full, every, name, where), split, protocol)


# ----------------------------------------------------------------------------------------- Omniglot

OMNIGLOT_HELP = (
    "Get it once on a machine with internet: python -m bmssl.data fetch omniglot ROOT (torchvision's "
    "pinned zips), then set data_root=ROOT (it holds omniglot-py/images_background and "
    "omniglot-py/images_evaluation, unzipped from github.com/brendenlake/omniglot)."
)


def _omniglot_folder(root: Path) -> Path:
    base = root if (root / "images_background").is_dir() else root / "omniglot-py"
    for part in ("images_background", "images_evaluation"):
        if not (base / part).is_dir():
            raise DataNotFoundError(
                f"dataset 'omniglot' not found at {str(base / part)!r}. {OMNIGLOT_HELP}"
            )
    return base


@lru_cache(maxsize=2)
def _omniglot_full(base: Path, image_size: int, invert: bool) -> TensorImageDataset:
    paths: list[Path] = []
    targets: list[int] = []
    classes: list[str] = []
    for part in ("images_background", "images_evaluation"):
        for alphabet in (p for p in visible_entries(base / part) if p.is_dir()):
            for character in (p for p in visible_entries(alphabet) if p.is_dir()):
                files = list_images(character)
                if not files:
                    raise DataNotFoundError(
                        f"dataset 'omniglot': no images in {str(character)!r}. {OMNIGLOT_HELP}"
                    )
                paths += files
                targets += [len(classes)] * len(files)
                classes.append(f"{alphabet.name}/{character.name}")
    full = preload_images(
        FileImageDataset(paths, targets, classes, image_size=image_size, channels=1)
    )
    if invert:
        full.images = 255 - full.images
    return full


@register_dataset("omniglot", OMNIGLOT_HELP)
def omniglot(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 28,
    invert: bool = True,
    split_sizes: tuple[int, int, int] = OMNIGLOT_SPLIT_SIZES,
    **_: Any,
) -> ImageDataset:
    """Omniglot characters (1 channel, ``image_size``², held in memory).

    ``invert`` (default) draws strokes bright on a black ground, as ``glyphs`` and ``digits`` do, so
    zero padding matches the background.
    """
    base = _omniglot_folder(require_root("omniglot", root))
    full = _omniglot_full(base.resolve(), image_size, invert)
    if protocol != "fewshot":
        return split_dataset(full, split, protocol)
    if sum(split_sizes) != full.num_classes:
        raise DataNotFoundError(
            f"dataset 'omniglot' at {str(base)!r} has {full.num_classes} characters but its split needs "
            f"{sum(split_sizes)} ({'/'.join(map(str, split_sizes))}); is the download complete? {OMNIGLOT_HELP}"
        )
    n_train, n_val = split_sizes[0], split_sizes[1]
    lo, hi = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, full.num_classes),
    }[split]
    return SubsetByClass(full, list(range(lo, hi)))


# ------------------------------------------------------------------------------------- miniImageNet

MINIIMAGENET_HELP = (
    "miniImageNet (100 ImageNet classes x 600 images) has no torchvision downloader: put it at ROOT as "
    "learn2learn's pickle cache (mini-imagenet-cache-train.pkl, -validation.pkl and -test.pkl), as "
    "<wnid>/<image> folders, as train/ val/ test/ folders of those, as images/ with the train.csv, val.csv "
    "and test.csv of Ravi & Larochelle (columns filename,label), or as a Hugging Face dataset saved with "
    "save_to_disk(ROOT) whose label names are the WordNet ids; then set data_root=ROOT."
)

# learn2learn's MiniImagenet(root, mode) reads ROOT/mini-imagenet-cache-<mode>.pkl: a pickled dict
# {"image_data": uint8 [N, 84, 84, 3], "class_dict": {wnid: [row, ...]}}, one file per split.
L2L_CACHE = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}
L2L_RESIZE_CHUNK = 512  # images resized at once: bounds the resize's scratch memory


def _has_l2l_cache(root: Path) -> bool:
    return any((root / name).is_file() for name in L2L_CACHE.values())


def _l2l_files(root: Path) -> dict[str, Path]:
    """The three cache files. All must be there, even when one split is asked for, so that a
    partial copy fails at once rather than when validation first needs its split."""
    files = {split: root / name for split, name in L2L_CACHE.items()}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise DataNotFoundError(
            f"dataset 'miniimagenet' at {str(root)!r} holds learn2learn's pickle cache but lacks "
            f"{' and '.join(missing)}: copy the missing file(s) beside the others (the cache is "
            "mini-imagenet-cache-train.pkl, -validation.pkl and -test.pkl)"
        )
    return files


def _l2l_arrays(content: Any, where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One cache file's images (uint8 ``[N, H, W, 3]``, as stored), each row's class (``-1``
    for a row no class lists) and the class names, in the file's order."""

    def bad(what: str) -> UserError:
        return UserError(
            f"{where} is not learn2learn's miniImageNet cache: {what}; replace it with the "
            "genuine file"
        )

    if not isinstance(content, dict) or not {"image_data", "class_dict"} <= content.keys():
        raise bad("expected a dict with keys 'image_data' and 'class_dict'")
    images, class_dict = content["image_data"], content["class_dict"]
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[-1] == 3
    ):
        shown = (
            f"{images.dtype} {list(images.shape)}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise bad(f"image_data is {shown}, expected a uint8 array [N, 84, 84, 3]")
    if not isinstance(class_dict, dict) or not class_dict:
        raise bad("class_dict is not a non-empty dict of class name -> row indices")
    targets = np.full(len(images), -1, dtype=np.int64)
    for label, (name, rows) in enumerate(class_dict.items()):
        idx = np.asarray(rows).reshape(-1)
        if idx.size == 0:
            raise bad(f"class {name!r} lists no images")
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(images):
            raise bad(f"class {name!r} lists rows that are not indices 0..{len(images) - 1}")
        if np.isin(targets[idx], (-1, label), invert=True).any():
            raise bad(f"class {name!r} lists rows another class lists too")
        targets[idx] = label
    return images, targets, [str(name) for name in class_dict]


def _resize_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` at ``image_size``², contiguous; resized as PILImageDataset resizes
    a decoded file (torchvision's antialiased bilinear on uint8), so the values match a folder
    of the same images."""
    if tuple(images.shape[-2:]) == (image_size, image_size):
        return images.contiguous()
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty((len(images), images.shape[1], image_size, image_size), dtype=torch.uint8)
    for lo in range(0, len(images), L2L_RESIZE_CHUNK):
        chunk = images[lo : lo + L2L_RESIZE_CHUNK]
        out[lo : lo + len(chunk)] = TF.resize(chunk, [image_size, image_size], antialias=True)
    return out


@lru_cache(maxsize=3)
def _l2l_split(path: Path, stamp: tuple[int, int], image_size: int) -> TensorImageDataset:
    """One cache file held in memory at ``image_size`` (``stamp``, the file's size and mtime,
    makes a replaced file be read again).

    Memory: the unpickled array lives on the bytes read from the file (no copy), and one
    channels-first copy (or the resized images) replaces it, so loading peaks at about twice the
    array (the real train file holds 38,400 x 84 x 84 x 3 bytes, 0.8 GB) and then holds it once.
    """
    images, targets, classes = _l2l_arrays(load_data_pickle(path), repr(str(path)))
    labelled = np.flatnonzero(targets >= 0)
    if len(labelled) < len(targets):  # rows that no class lists are left out
        images, targets = images[labelled], targets[labelled]
    if not images.flags.writeable:  # torch refuses to share read-only memory without a warning
        images = images.copy()
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)  # a view of the file's bytes
    return TensorImageDataset(_resize_uint8(chw, image_size), targets.tolist(), classes)


def _read_l2l_cache(root: Path, split: str, protocol: str, image_size: int) -> ImageDataset:
    """The cache file(s) a request needs: few-shot reads only the split's own file (the val and
    test files are small); the pooled protocols read all three and join them (one more copy)."""
    files = _l2l_files(root)
    wanted = [split] if protocol == "fewshot" else list(SPLITS)
    parts = []
    for s in wanted:
        info = files[s].stat()
        parts.append(_l2l_split(files[s].resolve(), (info.st_size, info.st_mtime_ns), image_size))
    if len(parts) == 1:
        return parts[0]
    classes = list(dict.fromkeys(c for part in parts for c in part.classes))
    index = {c: i for i, c in enumerate(classes)}
    targets = [index[part.classes[t]] for part in parts for t in part.targets]
    return TensorImageDataset(torch.cat([part.images for part in parts]), targets, classes)


def _read_ravi_csv(root: Path, image_size: int) -> LabelledSource:
    paths: list[Path] = []
    names: list[str] = []
    for split in SPLITS:
        csv = root / f"{split}.csv"
        if not csv.is_file():
            continue
        for line in csv.read_text().splitlines()[1:]:
            if line.strip():
                filename, label = line.strip().split(",")[:2]
                paths.append(root / "images" / filename)
                names.append(label)
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    missing = [p for p in paths[:: max(1, len(paths) // 20)] if not p.is_file()]  # spot-check a few
    if missing:
        raise DataNotFoundError(
            f"dataset 'miniimagenet': {str(missing[0])!r} is listed but missing. {MINIIMAGENET_HELP}"
        )
    dataset = FileImageDataset(
        paths, [index[n] for n in names], classes, image_size=image_size, channels=3
    )
    return LabelledSource(dataset, None, str(root))


def _miniimagenet_source(root: Path, image_size: int) -> LabelledSource:
    if is_saved_hf_dataset(root):
        return read_saved_hf(root, image_size, channels=3)
    if (root / "images").is_dir() and any((root / f"{s}.csv").is_file() for s in SPLITS):
        return _read_ravi_csv(root, image_size)
    if find_split_folders(root) or scan_class_folders(root):
        return read_image_tree(root, image_size, channels=3)
    raise DataNotFoundError(
        f"dataset 'miniimagenet' not found at {str(root)!r}: no layout recognised. {MINIIMAGENET_HELP}"
    )


@register_dataset("miniimagenet", MINIIMAGENET_HELP)
def miniimagenet(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 84,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """miniImageNet with the Ravi & Larochelle class split (3 channels, ``image_size``², 84 by default).

    Images are decoded on demand; ``preload=True`` holds the split in memory (about 1 GB for the
    64 train classes at 84²) for fast episodes. Split folders of the root are pooled: the class
    lists decide the split. learn2learn's pickle cache is held in memory as read (``preload`` is
    moot); its train / validation / test files are the train / val / test splits.
    """
    root = require_root("miniimagenet", root)
    if _has_l2l_cache(root):
        full = _read_l2l_cache(root, split, protocol, image_size)
        return _split_by_lists(full, "miniimagenet", split, protocol, str(root))
    source = _miniimagenet_source(root, image_size)
    return preload_if(
        _split_by_lists(source.dataset, "miniimagenet", split, protocol, str(root)), preload
    )


# ----------------------------------------------------------------------------------------- CIFAR-FS

CIFARFS_HELP = (
    "CIFAR-FS is built from CIFAR-100: run torchvision.datasets.CIFAR100(ROOT, download=True) once on a "
    "machine with internet, then set data_root=ROOT (it holds cifar-100-python/)."
)


@lru_cache(maxsize=2)
def _cifar100_full(base: Path, image_size: int) -> TensorImageDataset:
    """All 60,000 CIFAR-100 images, resized once to ``image_size`` and held as uint8."""
    images, targets, classes, _ = read_cifar(base, CIFAR100)
    if image_size != 32:
        resized = F.interpolate(
            images.float(), size=(image_size, image_size), mode="bilinear", antialias=True
        )
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    return TensorImageDataset(images, targets, classes)


@register_dataset("cifarfs", CIFARFS_HELP)
def cifarfs(
    root: Path | None, split: str, protocol: str, image_size: int = 32, **_: Any
) -> ImageDataset:
    """CIFAR-FS: all 60,000 CIFAR-100 images pooled, split by class (3 channels, held in memory)."""
    root = require_root("cifarfs", root)
    base = root if (root / "meta").is_file() else root / "cifar-100-python"
    for name in ("meta", "train", "test"):
        if not (base / name).is_file():
            raise DataNotFoundError(
                f"dataset 'cifarfs' not found at {str(base / name)!r}. {CIFARFS_HELP}"
            )
    try:
        full = _cifar100_full(base.resolve(), image_size)
    except CIFAR_READ_ERRORS as err:
        raise UserError(
            f"dataset 'cifarfs': {str(base)!r} does not hold CIFAR-100's python files ({err!r})"
        ) from None
    return _split_by_lists(full, "cifarfs", split, protocol, str(base))
