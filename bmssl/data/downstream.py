"""BiSSL's downstream classification sets, read from a local root (nothing is ever downloaded).

Each set is registered under a short name and read with torchvision's dataset class for it
(always ``download=False``) where that class accepts an honest copy of the data; where the class
checks md5 sums on load (CIFAR-10/100, Flowers102, STL10) a copy that differs in any byte, such as
the small roots the tests build, would be rejected, so the same on-disk format is read directly
instead, as ``fewshot_sets`` does for CIFAR-FS. CUB-200-2011 has no torchvision class.

Protocols and splits (``split`` is one of ``train`` / ``val`` / ``test``):

================  =====================================  ==================================  ========
name              train / test                           val                                 fewshot
================  =====================================  ==================================  ========
``cifar10``       official 50k / 10k                     10% of train (carved)               no
``cifar100``      official 50k / 10k                     10% of train (carved)               yes
``dtd``           official partition ``partition`` (1)   official                            yes
``flowers102``    official (``setid.mat``)               official                            yes
``pets``          official trainval / test               10% of trainval (carved)            yes
``cars``          official train / test                  10% of train (carved)               yes
``aircraft``      official train / test (variant)        official                            yes
``food101``       official train / test                  10% of train (carved)               yes
``sun397``        official partition ``partition`` (1)*  10% of train (carved)               yes
``caltech101``    ``train_per_class`` (30) per class /   10% of train (carved)               yes
                  rest (seeded; there is no official)
``stl10``         official 5k / 8k (no unlabeled)        10% of train (carved)               no
``fashionmnist``  official 60k / 10k                     10% of train (carved)               no
``voc2007``       official trainval / test               10% of trainval (carved)            no
``cub``           official ``train_test_split.txt``      10% of train (carved)               yes
================  =====================================  ==================================  ========

*SUN397: the official partitions (``Partitions/Training_01.txt`` ...) ship separately from the
images; without them every image is divided seeded half / half per class (the partitions' own
proportion: 50 train and 50 test images per class).

"Carved": a seeded (``seed``, default 0), per-class ``val_fraction`` (default 0.1) of the train
split becomes ``val`` and leaves ``train``; for VOC 2007 the strata are the first positive label.
Every split holds every class (``supervised`` protocol). With ``protocol="fewshot"`` the sets
marked "yes" pool all their images and apply the registry's class-disjoint split
(:func:`bmssl.data.registry.split_dataset`: contiguous 64/16/20% of the classes in the dataset's
own class order); the 10-class sets and multi-label VOC raise :class:`UserError` instead, since
two held-out classes do not make N-way episodes.

Images come as float ``[C, H, W]`` in ``[0, 1]`` resized to ``image_size`` (default: the native
size of the tensor-held sets, 32 for CIFAR, 96 for STL10, 28 for FashionMNIST; 224 for the
others); three channels except FashionMNIST, which has one unless ``channels=3``. File-backed sets
decode on demand; ``preload=True`` decodes the split into memory once.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from bmssl.data.base import FileImageDataset, ImageDataset, SubsetByClass, TensorImageDataset
from bmssl.data.fewshot_sets import _unpickle
from bmssl.data.folders import (
    find_split_folders,
    finish,
    is_saved_hf_dataset,
    read_image_tree,
    read_saved_hf,
    scan_class_folders,
)
from bmssl.data.registry import item_split_mask, register_dataset, require_root, split_dataset
from bmssl.errors import DataNotFoundError, UserError

FILE_IMAGE_SIZE = 224
VAL_FRACTION = 0.1
T = TypeVar("T")

# ------------------------------------------------------------------------------------ shared parts


class ResizedTensorDataset(TensorImageDataset):
    """uint8 images held at their native size and resized (and channel-expanded) on access.

    Holding CIFAR at 224² would cost 60,000·3·224² bytes (9 GB); the native 32² costs 184 MB.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        channels: int | None = None,
    ) -> None:
        super().__init__(images, targets, classes)
        self.channels = channels or int(images.shape[1])
        if self.channels not in (images.shape[1], 3) or images.shape[1] not in (1, self.channels):
            raise UserError(
                f"cannot show {images.shape[1]}-channel images with channels={channels}; use 1 or 3"
            )
        self.image_shape = (self.channels, image_size, image_size)

    def _convert(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float().div_(255.0)
        size = self.image_shape[1:]
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)  # bilinear antialiasing overshoots slightly at edges
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._convert(self.images[index : index + 1])[0], self.targets[index]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self._convert(self.images[idx])


def _help(name: str) -> str:
    return HOW_TO_GET[name]


def _missing(name: str, path: Path, what: str = "not found at") -> DataNotFoundError:
    return DataNotFoundError(f"dataset {name!r} {what} {str(path)!r}. {_help(name)}")


def _locate(name: str, root: Path | None, inner: str, required: Sequence[str]) -> Path:
    """The folder ``F`` with every ``F/inner/<required>``: ``root`` itself, or the folder above
    ``root`` when ``root`` already is ``inner`` (users often pass the extracted folder).

    Otherwise one clear error naming the first part missing under ``root``.
    """
    root = require_root(name, root)
    depth = len(Path(inner).parts)
    candidates = [root]
    if root.parts[-depth:] == Path(inner).parts and len(root.parts) > depth:
        candidates.append(root.parents[depth - 1])
    for outer in candidates:
        if all((outer / inner / part).exists() for part in required):
            return outer
    first = next(part for part in required if not (root / inner / part).exists())
    raise _missing(name, root / inner / first)


def _torchvision(name: str, where: Path, cls: Callable[..., T], **kwargs: Any) -> T:
    """``cls(where, download=False, **kwargs)``; torchvision's bare "Dataset not found" becomes
    our error with the path and the how-to."""
    try:
        return cls(where, download=False, **kwargs)
    except (RuntimeError, FileNotFoundError) as err:
        raise DataNotFoundError(
            f"dataset {name!r} at {str(where)!r} is incomplete ({err}). {_help(name)}"
        ) from None


def _file_listing(name: str, dataset: Any) -> tuple[list[Path], list[int]]:
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


def _gather(
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
        files, labels = _file_listing(name, dataset)
        paths += files
        targets += [relabel(dataset, t) for t in labels] if relabel else labels
        part += [(part_names or {}).get(split, split)] * len(labels)
    return paths, targets, part


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


def _carve_val(targets: np.ndarray, part: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """``part`` with a seeded, per-class ``val_fraction`` of the ``train`` items marked ``val``."""
    _check_fraction(val_fraction)
    part = part.astype(object).copy()
    train = np.nonzero(part == "train")[0]
    val = item_split_mask(
        targets[train], "val", fractions=(1.0 - val_fraction, val_fraction, 0.0), seed=seed
    )
    part[train[val]] = "val"
    return part


def _supervised_only(name: str, protocol: str) -> None:
    if protocol == "fewshot":
        raise UserError(
            f"dataset {name!r} is supervised-only (too few classes, or multi-label, for class-"
            "disjoint few-shot splits); pass protocol='supervised'"
        )


def _split(
    name: str,
    full: ImageDataset,
    part: Sequence[str] | np.ndarray,
    split: str,
    protocol: str,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> ImageDataset:
    """The ``split`` of ``full`` whose items carry the official ``part`` (train / val / test).

    Few-shot pools every item and splits by class; supervised keeps the official parts, carving
    ``val`` out of ``train`` when the dataset has none.
    """
    if protocol == "fewshot":
        return split_dataset(full, split, "fewshot")
    targets = np.asarray(full.targets)
    part = np.asarray(part, dtype=object)
    if not (part == "val").any():
        part = _carve_val(targets, part, val_fraction, seed)
    mask = part == split
    if not mask.any():
        raise DataNotFoundError(f"dataset {name!r} has no {split!r} images. {_help(name)}")
    return SubsetByClass(full, list(range(full.num_classes)), item_mask=mask)


def _files(
    name: str,
    paths: Sequence[Path],
    targets: Sequence[int],
    classes: Sequence[str],
    part: Sequence[str],
    image_size: int,
) -> tuple[FileImageDataset, list[str]]:
    """Every image of a set as one dataset, after a spot check that the listed files exist."""
    if not paths:
        raise DataNotFoundError(f"dataset {name!r}: its lists name no images. {_help(name)}")
    for p in list(paths[:: max(1, len(paths) // 20)]) + [paths[-1]]:  # a full stat is slow
        if not Path(p).is_file():
            raise _missing(name, Path(p), "lists an image missing at")
    bad = [t for t in targets if not 0 <= t < len(classes)]
    if bad:
        raise DataNotFoundError(
            f"dataset {name!r}: label {bad[0]} outside its {len(classes)} classes. {_help(name)}"
        )
    return FileImageDataset(paths, targets, classes, image_size=image_size), list(part)


def _check_partition(partition: int) -> None:
    if partition not in range(1, 11):
        raise UserError(f"partition must be an integer from 1 to 10, got {partition!r}")


# ------------------------------------------------------------------------------------ how to get

HOW_TO_GET: dict[str, str] = {
    "cifar10": (
        "Run torchvision.datasets.CIFAR10(ROOT, download=True) once on a machine with internet, then "
        "pass root=ROOT (it holds cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta)."
    ),
    "cifar100": (
        "Run torchvision.datasets.CIFAR100(ROOT, download=True) once on a machine with internet, then "
        "pass root=ROOT (it holds cifar-100-python/ with train, test, meta)."
    ),
    "dtd": (
        "Run torchvision.datasets.DTD(ROOT, download=True) once on a machine with internet, then pass "
        "root=ROOT (it holds dtd/dtd/images/<class>/ and dtd/dtd/labels/{train,val,test}<1-10>.txt)."
    ),
    "flowers102": (
        "Run torchvision.datasets.Flowers102(ROOT, download=True) once on a machine with internet, then "
        "pass root=ROOT (it holds flowers-102/jpg/image_00001.jpg..., imagelabels.mat and setid.mat)."
    ),
    "pets": (
        "Run torchvision.datasets.OxfordIIITPet(ROOT, download=True) once on a machine with internet, "
        "then pass root=ROOT (it holds oxford-iiit-pet/images/*.jpg and "
        "oxford-iiit-pet/annotations/{trainval,test}.txt)."
    ),
    "cars": (
        "torchvision.datasets.StanfordCars can no longer download (the original URL is gone): get the "
        "files from a mirror (e.g. Kaggle 'stanford-cars-dataset' plus cars_test_annos_withlabels.mat) and "
        "lay them out as ROOT/stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, "
        "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}; then pass root=ROOT."
    ),
    "aircraft": (
        "Run torchvision.datasets.FGVCAircraft(ROOT, download=True) once on a machine with internet, "
        "then pass root=ROOT (it holds fgvc-aircraft-2013b/data/images/, variants.txt and "
        "images_variant_{train,val,test}.txt)."
    ),
    "food101": (
        "Run torchvision.datasets.Food101(ROOT, download=True) once on a machine with internet, then pass "
        "root=ROOT (it holds food-101/images/<class>/<id>.jpg and food-101/meta/{train,test}.json)."
    ),
    "sun397": (
        "Run torchvision.datasets.SUN397(ROOT, download=True) once on a machine with internet (ROOT/SUN397 "
        "holds ClassName.txt and a/abbey/sun_*.jpg ...); for the standard split also unzip the official "
        "Partitions.zip (vision.princeton.edu/projects/2010/SUN/download/) into ROOT/SUN397/Partitions/; "
        "then pass root=ROOT."
    ),
    "caltech101": (
        "Run torchvision.datasets.Caltech101(ROOT, download=True) once on a machine with internet, then "
        "pass root=ROOT (it holds caltech101/101_ObjectCategories/<class>/image_0001.jpg ..., "
        "BACKGROUND_Google included; it is left out as torchvision does)."
    ),
    "stl10": (
        "Run torchvision.datasets.STL10(ROOT, split='train', download=True) once on a machine with "
        "internet, then pass root=ROOT (it holds stl10_binary/{train,test}_{X,y}.bin and class_names.txt)."
    ),
    "fashionmnist": (
        "Run torchvision.datasets.FashionMNIST(ROOT, download=True) once on a machine with internet, then "
        "pass root=ROOT (it holds FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte)."
    ),
    "voc2007": (
        "Run torchvision.datasets.VOCDetection(ROOT, year='2007', image_set='trainval', download=True) and "
        "the same with image_set='test' once on a machine with internet, then pass root=ROOT (it holds "
        "VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main/trainval.txt, test.txt})."
    ),
    "cub": (
        "torchvision has no CUB class: extract CUB_200_2011.tgz (data.caltech.edu/records/65de6-vp158) "
        "into ROOT (ROOT/CUB_200_2011/{images/, images.txt, image_class_labels.txt, "
        "train_test_split.txt, classes.txt}), or pass an ImageFolder tree (<class>/<image>, or "
        "train/ test/ folders of those), or a Hugging Face dataset saved with save_to_disk(ROOT)."
    ),
}


def _register(name: str) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    return register_dataset(name, HOW_TO_GET[name])  # type: ignore[return-value]


# ------------------------------------------------------------------------------ CIFAR-10 / -100


@lru_cache(maxsize=2)
def _cifar_arrays(
    base: Path, files: tuple[tuple[str, str], ...], label_key: str, names_file: str, names_key: str
) -> tuple[torch.Tensor, list[int], list[str], list[str]]:
    """Images ``uint8 [N, 3, 32, 32]``, labels, class names and the part of each, from the pickles."""
    chunks, targets, part = [], [], []
    for filename, which in files:
        entry = _unpickle(base / filename)
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        chunks.append(data)
        targets += [int(t) for t in entry[label_key]]
        part += [which] * len(data)
        if len(data) != len(entry[label_key]):
            raise ValueError(f"{filename}: {len(data)} images but {len(entry[label_key])} labels")
    names = list(_unpickle(base / names_file)[names_key])
    return torch.from_numpy(np.concatenate(chunks)), targets, names, part


def _cifar(
    name: str,
    root: Path | None,
    inner: str,
    files: tuple[tuple[str, str], ...],
    label_key: str,
    names_file: str,
    names_key: str,
    image_size: int,
) -> tuple[ImageDataset, list[str]]:
    outer = _locate(name, root, inner, [f for f, _ in files] + [names_file])
    try:
        images, targets, classes, part = _cifar_arrays(
            (outer / inner).resolve(), files, label_key, names_file, names_key
        )
    except (OSError, EOFError, KeyError, ValueError, TypeError) as err:
        raise DataNotFoundError(
            f"dataset {name!r}: {str(outer / inner)!r} does not hold its python pickles ({err!r}). "
            f"{_help(name)}"
        ) from None
    return ResizedTensorDataset(images, targets, classes, image_size), part


@_register("cifar10")
def cifar10(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 32,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """CIFAR-10 (10 classes, 32² native, in memory); supervised-only."""
    _supervised_only("cifar10", protocol)
    files = tuple((f"data_batch_{i}", "train") for i in range(1, 6)) + (("test_batch", "test"),)
    full, part = _cifar(
        "cifar10",
        root,
        "cifar-10-batches-py",
        files,
        "labels",
        "batches.meta",
        "label_names",
        image_size,
    )
    return _split("cifar10", full, part, split, protocol, val_fraction, seed)


@_register("cifar100")
def cifar100(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 32,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """CIFAR-100 fine labels (100 classes, 32² native, in memory)."""
    full, part = _cifar(
        "cifar100",
        root,
        "cifar-100-python",
        (("train", "train"), ("test", "test")),
        "fine_labels",
        "meta",
        "fine_label_names",
        image_size,
    )
    return _split("cifar100", full, part, split, protocol, val_fraction, seed)


# ---------------------------------------------------------------------------------------- DTD


@_register("dtd")
def dtd(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    partition: int = 1,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Describable Textures (47 classes): official train / val / test of ``partition`` (1-10)."""
    from torchvision.datasets import DTD

    _check_partition(partition)
    lists = [f"dtd/labels/{s}{partition}.txt" for s in ("train", "val", "test")]
    outer = _locate("dtd", root, "dtd", ["dtd/images", *lists])
    parts = {
        s: _torchvision("dtd", outer, DTD, split=s, partition=partition)
        for s in ("train", "val", "test")
    }
    # Each torchvision split numbers the classes it sees; the union keeps one global order.
    classes = sorted(set().union(*(d.classes for d in parts.values())))
    index = {c: i for i, c in enumerate(classes)}
    paths, targets, part = _gather("dtd", parts, lambda d, t: index[d.classes[t]])
    full, part = _files("dtd", paths, targets, classes, part, image_size)
    return finish(_split("dtd", full, part, split, protocol), preload)


# ---------------------------------------------------------------------------------- Flowers102

FLOWERS_SETS = {"train": "trnid", "val": "valid", "test": "tstid"}  # setid.mat's keys


@_register("flowers102")
def flowers102(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Oxford Flowers-102: official train / val / test from ``setid.mat``.

    Read directly (scipy) because torchvision's Flowers102 checks the md5 of both ``.mat`` files.
    """
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    outer = _locate("flowers102", root, "flowers-102", ["jpg", "imagelabels.mat", "setid.mat"])
    base = outer / "flowers-102"
    try:
        labels = np.atleast_1d(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]) - 1
        set_ids = loadmat(base / "setid.mat", squeeze_me=True)
        ids = {s: np.atleast_1d(set_ids[k]) for s, k in FLOWERS_SETS.items()}
    except (OSError, ValueError, KeyError) as err:
        raise DataNotFoundError(
            f"dataset 'flowers102': {str(base)!r} holds unreadable .mat files ({err!r}). "
            f"{_help('flowers102')}"
        ) from None
    paths, targets, part = [], [], []
    for s, image_ids in ids.items():
        for i in image_ids.tolist():
            paths.append(base / "jpg" / f"image_{i:05d}.jpg")
            targets.append(int(labels[i - 1]))
            part.append(s)
    full, part = _files("flowers102", paths, targets, list(Flowers102.classes), part, image_size)
    return finish(_split("flowers102", full, part, split, protocol), preload)


# -------------------------------------------------------------------------------- Oxford-IIIT Pet


@_register("pets")
def pets(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Oxford-IIIT Pet (37 breeds): official trainval -> train (+ carved val), test -> test."""
    from torchvision.datasets import OxfordIIITPet

    required = ["images", "annotations/trainval.txt", "annotations/test.txt"]
    outer = _locate("pets", root, "oxford-iiit-pet", required)
    parts = {s: _torchvision("pets", outer, OxfordIIITPet, split=s) for s in ("trainval", "test")}
    # Labels come from the annotation files (1-based breed ids), so they agree across splits.
    classes = max((d.classes for d in parts.values()), key=len)
    paths, targets, part = _gather("pets", parts, part_names={"trainval": "train"})
    full, part = _files("pets", paths, targets, classes, part, image_size)
    return finish(_split("pets", full, part, split, protocol, val_fraction, seed), preload)


# ------------------------------------------------------------------------------- Stanford Cars


@_register("cars")
def cars(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Stanford Cars (196 models): official train / test (+ carved val)."""
    from torchvision.datasets import StanfordCars

    required = [
        "devkit/cars_meta.mat",
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
        "cars_train",
        "cars_test",
    ]
    outer = _locate("cars", root, "stanford_cars", required)
    parts = {s: _torchvision("cars", outer, StanfordCars, split=s) for s in ("train", "test")}
    paths, targets, part = _gather("cars", parts)
    classes = [str(c) for c in parts["train"].classes]
    full, part = _files("cars", paths, targets, classes, part, image_size)
    return finish(_split("cars", full, part, split, protocol, val_fraction, seed), preload)


# -------------------------------------------------------------------------------- FGVC Aircraft


@_register("aircraft")
def aircraft(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    annotation_level: str = "variant",
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """FGVC-Aircraft 2013b: 100 variants by default (``annotation_level``: variant / family /
    manufacturer); official train / val / test."""
    from torchvision.datasets import FGVCAircraft

    levels = {
        "variant": "variants.txt",
        "family": "families.txt",
        "manufacturer": "manufacturers.txt",
    }
    if annotation_level not in levels:
        raise UserError(
            f"annotation_level must be one of {', '.join(levels)}, got {annotation_level!r}"
        )
    required = ["data/images", f"data/{levels[annotation_level]}"] + [
        f"data/images_{annotation_level}_{s}.txt" for s in ("train", "val", "test")
    ]
    outer = _locate("aircraft", root, "fgvc-aircraft-2013b", required)
    parts = {
        s: _torchvision("aircraft", outer, FGVCAircraft, split=s, annotation_level=annotation_level)
        for s in ("train", "val", "test")
    }
    paths, targets, part = _gather("aircraft", parts)
    full, part = _files("aircraft", paths, targets, parts["train"].classes, part, image_size)
    return finish(_split("aircraft", full, part, split, protocol), preload)


# ------------------------------------------------------------------------------------ Food-101


@_register("food101")
def food101(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Food-101 (101 dishes): official train / test (+ carved val)."""
    from torchvision.datasets import Food101

    outer = _locate("food101", root, "food-101", ["images", "meta/train.json", "meta/test.json"])
    try:
        parts = {s: _torchvision("food101", outer, Food101, split=s) for s in ("train", "test")}
    except json.JSONDecodeError as err:
        raise DataNotFoundError(
            f"dataset 'food101': unreadable meta/*.json under {str(outer)!r} ({err}). "
            f"{_help('food101')}"
        ) from None
    classes = sorted(set().union(*(d.classes for d in parts.values())))
    index = {c: i for i, c in enumerate(classes)}
    paths, targets, part = _gather("food101", parts, lambda d, t: index[d.classes[t]])
    full, part = _files("food101", paths, targets, classes, part, image_size)
    return finish(_split("food101", full, part, split, protocol, val_fraction, seed), preload)


# -------------------------------------------------------------------------------------- SUN397


@_register("sun397")
def sun397(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    partition: int = 1,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """SUN397 (397 scenes): the official ``partition`` (1-10, from ``Partitions/``) when present,
    else a seeded half / half per class of every image; val carved from train either way."""
    _check_partition(partition)
    outer = _locate("sun397", root, "SUN397", ["ClassName.txt"])
    base = outer / "SUN397"
    # Same class names as torchvision's SUN397: "/a/abbey" -> "abbey".
    classes = [line[3:].strip() for line in (base / "ClassName.txt").read_text().splitlines()]
    classes = [c for c in classes if c]
    index = {c: i for i, c in enumerate(classes)}
    lists = [
        base / "Partitions" / f"{kind}_{partition:02d}.txt" for kind in ("Training", "Testing")
    ]
    if all(p.is_file() for p in lists):
        paths, part = [], []
        for which, listing in zip(("train", "test"), lists):
            for line in listing.read_text().splitlines():
                if line.strip():
                    paths.append(base / line.strip().lstrip("/"))
                    part.append(which)
    else:
        from torchvision.datasets import SUN397

        d = _torchvision("sun397", outer, SUN397)
        files, labels = _file_listing("sun397", d)
        order = np.argsort([str(p) for p in files])  # rglob order is the filesystem's
        paths = [files[i] for i in order]
        half = item_split_mask([labels[i] for i in order], "train", (0.5, 0.0, 0.5), seed)
        part = np.where(half, "train", "test").tolist()
    try:
        targets = [index["/".join(p.relative_to(base).parts[1:-1])] for p in paths]
    except KeyError as err:
        raise DataNotFoundError(
            f"dataset 'sun397': class {err} is not in {str(base / 'ClassName.txt')!r}. "
            f"{_help('sun397')}"
        ) from None
    full, part = _files("sun397", paths, targets, classes, part, image_size)
    return finish(_split("sun397", full, part, split, protocol, val_fraction, seed), preload)


# -------------------------------------------------------------------------------- Caltech-101


@_register("caltech101")
def caltech101(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    train_per_class: int = 30,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """Caltech-101 (101 classes, background left out): no official split, so ``train_per_class``
    seeded images per class train (val carved from them) and the rest test, the usual protocol."""
    from torchvision.datasets import Caltech101

    if train_per_class < 1:
        raise UserError(f"train_per_class must be >= 1, got {train_per_class!r}")
    # Checked first: torchvision's Caltech101 creates ROOT/caltech101 when missing, and fails
    # with a bare ValueError when BACKGROUND_Google (which it removes) is absent.
    outer = _locate("caltech101", root, "caltech101", ["101_ObjectCategories/BACKGROUND_Google"])
    d = _torchvision("caltech101", outer, Caltech101, target_type="category")
    folder = outer / "caltech101" / "101_ObjectCategories"
    paths = [folder / d.categories[y] / f"image_{i:04d}.jpg" for y, i in zip(d.y, d.index)]
    rng = np.random.default_rng(seed)
    labels = np.asarray(d.y)
    which = np.full(len(labels), "test", dtype=object)
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        which[rng.permutation(idx)[:train_per_class]] = "train"
    full, part = _files("caltech101", paths, d.y, d.categories, which.tolist(), image_size)
    return finish(_split("caltech101", full, part, split, protocol, val_fraction, seed), preload)


# --------------------------------------------------------------------------------------- STL-10


@lru_cache(maxsize=1)
def _stl10_arrays(base: Path) -> tuple[torch.Tensor, list[int], list[str], list[str]]:
    chunks, targets, part = [], [], []
    for which in ("train", "test"):
        raw = np.fromfile(base / f"{which}_X.bin", dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise ValueError(f"{which}_X.bin holds {raw.size} bytes, not whole 3x96x96 images")
        # Stored column-major per channel: transpose to [N, C, H, W], as torchvision's STL10 does.
        images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
        labels = np.fromfile(base / f"{which}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise ValueError(f"{which}: {len(images)} images but {len(labels)} labels")
        chunks.append(images)
        targets += labels.tolist()
        part += [which] * len(labels)
    classes = [c for c in (base / "class_names.txt").read_text().splitlines() if c.strip()]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks))), targets, classes, part


@_register("stl10")
def stl10(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 96,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """STL-10 labelled images (10 classes, 96² native, in memory); supervised-only.

    Read directly because torchvision's STL10 checks the md5 of every binary (the 2.6 GB unlabeled
    one included) on load.
    """
    _supervised_only("stl10", protocol)
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    outer = _locate("stl10", root, "stl10_binary", files)
    try:
        images, targets, classes, part = _stl10_arrays((outer / "stl10_binary").resolve())
    except (OSError, ValueError) as err:
        raise DataNotFoundError(
            f"dataset 'stl10': {str(outer / 'stl10_binary')!r} holds unreadable binaries ({err}). "
            f"{_help('stl10')}"
        ) from None
    full = ResizedTensorDataset(images, targets, classes, image_size)
    return _split("stl10", full, part, split, protocol, val_fraction, seed)


# --------------------------------------------------------------------------------- FashionMNIST


@_register("fashionmnist")
def fashionmnist(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 28,
    channels: int = 1,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """Fashion-MNIST (10 classes, 28² grey, in memory); ``channels=3`` repeats the grey channel.
    Supervised-only."""
    from torchvision.datasets import FashionMNIST

    _supervised_only("fashionmnist", protocol)
    if channels not in (1, 3):
        raise UserError(f"fashionmnist: channels must be 1 or 3, got {channels!r}")
    files = [
        f"raw/{p}-{k}"
        for p in ("train", "t10k")
        for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    outer = _locate("fashionmnist", root, "FashionMNIST", files)
    parts = {
        s: _torchvision("fashionmnist", outer, FashionMNIST, train=s == "train")
        for s in ("train", "test")
    }
    images = torch.cat([d.data for d in parts.values()]).unsqueeze(1)
    targets = torch.cat([d.targets for d in parts.values()]).tolist()
    part = [s for s, d in parts.items() for _ in range(len(d.targets))]
    full = ResizedTensorDataset(images, targets, FashionMNIST.classes, image_size, channels)
    return _split("fashionmnist", full, part, split, protocol, val_fraction, seed)


# ---------------------------------------------------------------------------------- VOC 2007

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
DIFFICULT_MODES = ("positive", "ignore")


class MultiLabelFileDataset(FileImageDataset):
    """Image files with multi-hot labels: items are ``(image, float [C])``.

    ``label_matrix`` (``float32 [N, C]``) holds the labels; ``targets`` the first positive class of
    each item (the first annotated class when none is positive) so that per-class tools
    (stratified splits, ``indices_by_class``) still work; ``difficult_matrix`` (``bool [N, C]``)
    marks classes present only through objects flagged difficult.
    """

    multilabel = True

    def __init__(
        self,
        paths: Sequence[Path],
        label_matrix: np.ndarray,
        fallback: Sequence[int],
        difficult_matrix: np.ndarray,
        classes: Sequence[str],
        image_size: int,
    ) -> None:
        matrix = np.asarray(label_matrix, dtype=np.float32)
        has = matrix.any(axis=1)
        targets = np.where(has, matrix.argmax(axis=1), np.asarray(fallback, dtype=np.int64))
        super().__init__(paths, targets.tolist(), classes, image_size=image_size)
        self.label_matrix = matrix
        self.difficult_matrix = np.asarray(difficult_matrix, dtype=bool)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        image, _ = super().__getitem__(index)
        return image, torch.from_numpy(self.label_matrix[index].copy())


@lru_cache(maxsize=4)
def _voc_annotations(
    paths: tuple[str, ...], difficult: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Multi-hot labels, difficult-only flags and first annotated class, from the XML files."""
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(paths), len(VOC_CLASSES)), dtype=np.float32)
    plain = np.zeros_like(labels, dtype=bool)
    flagged = np.zeros_like(plain)
    first = []
    for row, path in enumerate(paths):
        objects = ET.parse(path).getroot().iter("object")
        names = []
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise ValueError(f"{path}: unknown object class {name!r}")
            names.append(index[name])
            if (obj.findtext("difficult") or "0").strip() == "1":
                flagged[row, index[name]] = True
            else:
                plain[row, index[name]] = True
        if not names:
            raise ValueError(f"{path}: no <object> annotated")
        first.append(names[0])
    difficult_only = flagged & ~plain
    labels[(plain | difficult_only) if difficult == "positive" else plain] = 1.0
    return labels, difficult_only, first


@_register("voc2007")
def voc2007(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    difficult: str = "positive",
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """PASCAL VOC 2007 classification, multi-label over 20 classes; supervised-only.

    trainval -> ``train`` (less a carved ``val``, stratified by first positive label), test ->
    ``test``. A class is positive when any object of it is annotated; ``difficult`` says what an
    object flagged difficult counts as: ``"positive"`` (default) or ``"ignore"`` (left out, so an
    image whose only instances of a class are difficult is negative for it). Either way
    ``difficult_matrix`` marks those image-class pairs, the devkit's "0" entries that its
    evaluation leaves out.
    """
    from torchvision.datasets import VOCDetection

    _supervised_only("voc2007", protocol)
    if difficult not in DIFFICULT_MODES:
        raise UserError(f"difficult must be one of {', '.join(DIFFICULT_MODES)}, got {difficult!r}")
    image_set = "test" if split == "test" else "trainval"
    required = ["JPEGImages", "Annotations", f"ImageSets/Main/{image_set}.txt"]
    outer = _locate("voc2007", root, "VOCdevkit/VOC2007", required)
    d = _torchvision("voc2007", outer, VOCDetection, year="2007", image_set=image_set)
    paths = [Path(p) for p in d.images]
    missing = [p for p in d.annotations if not Path(p).is_file()]
    if missing:
        raise _missing("voc2007", Path(missing[0]), "lists an annotation missing at")
    try:
        labels, difficult_only, first = _voc_annotations(tuple(d.annotations), difficult)
    except (ET.ParseError, ValueError) as err:
        raise DataNotFoundError(
            f"dataset 'voc2007': bad annotation ({err}). {_help('voc2007')}"
        ) from None
    full = MultiLabelFileDataset(paths, labels, first, difficult_only, VOC_CLASSES, image_size)
    if split == "test":
        return full
    part = _carve_val(np.asarray(full.targets), np.full(len(paths), "train"), val_fraction, seed)
    keep = np.nonzero(part == split)[0]
    return MultiLabelFileDataset(
        [paths[i] for i in keep],
        labels[keep],
        [first[i] for i in keep],
        difficult_only[keep],
        VOC_CLASSES,
        image_size,
    )


# ------------------------------------------------------------------------------- CUB-200-2011


def _read_pairs(path: Path) -> dict[int, str]:
    """``<id> <value>`` lines (CUB's metadata files) as ``{id: value}``."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, value = line.strip().split(" ", 1)
            pairs[int(key)] = value.strip()
    return pairs


def _cub_official(base: Path, image_size: int) -> tuple[FileImageDataset, list[str]]:
    try:
        images = _read_pairs(base / "images.txt")
        labels = _read_pairs(base / "image_class_labels.txt")
        is_train = _read_pairs(base / "train_test_split.txt")
        names = _read_pairs(base / "classes.txt")
        classes = [names[k] for k in sorted(names)]
        ids = sorted(images)
        targets = [int(labels[i]) - 1 for i in ids]
        part = ["train" if is_train[i] == "1" else "test" for i in ids]
    except (KeyError, ValueError) as err:
        raise DataNotFoundError(
            f"dataset 'cub': the metadata files in {str(base)!r} disagree or are malformed "
            f"(at {err}). {_help('cub')}"
        ) from None
    paths = [base / "images" / images[i] for i in ids]
    return _files("cub", paths, targets, classes, part, image_size)


@_register("cub")
def cub(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = FILE_IMAGE_SIZE,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    preload: bool = False,
    **_: Any,
) -> ImageDataset:
    """CUB-200-2011 (200 birds). Layouts, first match wins: the official one (``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``images/``, in ROOT
    or ROOT/CUB_200_2011); a saved Hugging Face dataset; an ImageFolder tree. Official or
    train/test splits are kept (val carved); a flat tree or single table gets the registry's
    seeded 70/10/20 per-class division."""
    root = require_root("cub", root)
    meta = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    for base in (root, root / "CUB_200_2011"):
        if (base / "images.txt").is_file():
            for name in meta:
                if not (base / name).is_file():
                    raise _missing("cub", base / name)
            full, part = _cub_official(base, image_size)
            return finish(_split("cub", full, part, split, protocol, val_fraction, seed), preload)
    if is_saved_hf_dataset(root):
        source = read_saved_hf(root, image_size, channels=3)
    elif find_split_folders(root) or scan_class_folders(root):
        source = read_image_tree(root, image_size, channels=3)
    else:
        raise _missing("cub", root, "has no layout recognised at")
    if source.part is None:
        return finish(split_dataset(source.dataset, split, protocol), preload)
    return finish(
        _split("cub", source.dataset, source.part, split, protocol, val_fraction, seed), preload
    )
