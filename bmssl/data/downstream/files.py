"""The file-backed downstream sets: DTD, Flowers102, Pets, Cars, Aircraft, Food-101, SUN397,
Caltech-101 (read with torchvision's class for each, ``download=False``) and CUB-200-2011 (no
torchvision class). Images are decoded on demand; ``preload=True`` decodes a split once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.data.downstream._common import (
    Parts,
    Request,
    check_partition,
    downstream_set,
    file_listing,
    gather,
    image_files,
    locate,
    torchvision_set,
)
from bmssl.data.folders import find_split_folders, read_image_tree, scan_class_folders
from bmssl.data.hf import is_saved_hf_dataset, read_saved_hf
from bmssl.data.registry import require_root
from bmssl.data.splitting import item_split_mask
from bmssl.errors import UserError


def _global_classes(parts: dict[str, Any]) -> tuple[list[str], Any]:
    """Sorted union of the splits' class names, and ``relabel`` for :func:`gather` onto it
    (each torchvision split numbers only the classes it sees)."""
    classes = sorted(set().union(*(d.classes for d in parts.values())))
    index = {c: i for i, c in enumerate(classes)}
    return classes, lambda d, t: index[d.classes[t]]


@downstream_set(
    "dtd",
    "Run torchvision.datasets.DTD(ROOT, download=True) once on a machine with internet, then pass "
    "root=ROOT (it holds dtd/dtd/images/<class>/ and dtd/dtd/labels/{train,val,test}<1-10>.txt).",
)
def dtd(root: Path | None, request: Request, partition: int = 1, **_: Any) -> Parts:
    """Describable Textures (47 classes): official train / val / test of ``partition`` (1-10)."""
    from torchvision.datasets import DTD

    check_partition(partition)
    lists = [f"dtd/labels/{s}{partition}.txt" for s in ("train", "val", "test")]
    outer = locate(request, root, "dtd", ["dtd/images", *lists])
    parts = {
        s: torchvision_set(request, outer, DTD, split=s, partition=partition)
        for s in ("train", "val", "test")
    }
    classes, relabel = _global_classes(parts)
    paths, targets, part = gather("dtd", parts, relabel)
    return image_files(request, paths, targets, classes, part)


FLOWERS_SETS = {"train": "trnid", "val": "valid", "test": "tstid"}  # setid.mat's keys


@downstream_set(
    "flowers102",
    "Run torchvision.datasets.Flowers102(ROOT, download=True) once on a machine with internet, then "
    "set data_root=ROOT (it holds flowers-102/jpg/image_00001.jpg..., imagelabels.mat and setid.mat).",
)
def flowers102(root: Path | None, request: Request, **_: Any) -> Parts:
    """Oxford Flowers-102: official train / val / test from ``setid.mat``.

    Read directly (scipy) because torchvision's Flowers102 checks the md5 of both ``.mat`` files.
    """
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    base = locate(request, root, "flowers-102", ["jpg", "imagelabels.mat", "setid.mat"])
    base = base / "flowers-102"
    try:
        labels = np.atleast_1d(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]) - 1
        set_ids = loadmat(base / "setid.mat", squeeze_me=True)
        ids = {s: np.atleast_1d(set_ids[k]) for s, k in FLOWERS_SETS.items()}
    except (OSError, ValueError, KeyError) as err:
        raise request.error(f"{str(base)!r} holds unreadable .mat files ({err!r})") from None
    paths, targets, part = [], [], []
    for s, image_ids in ids.items():
        for i in image_ids.tolist():
            paths.append(base / "jpg" / f"image_{i:05d}.jpg")
            targets.append(int(labels[i - 1]))
            part.append(s)
    return image_files(request, paths, targets, list(Flowers102.classes), part)


@downstream_set(
    "pets",
    "Run torchvision.datasets.OxfordIIITPet(ROOT, download=True) once on a machine with internet, "
    "then set data_root=ROOT (it holds oxford-iiit-pet/images/*.jpg and "
    "oxford-iiit-pet/annotations/{trainval,test}.txt).",
)
def pets(root: Path | None, request: Request, **_: Any) -> Parts:
    """Oxford-IIIT Pet (37 breeds): official trainval -> train (+ carved val), test -> test."""
    from torchvision.datasets import OxfordIIITPet

    required = ["images", "annotations/trainval.txt", "annotations/test.txt"]
    outer = locate(request, root, "oxford-iiit-pet", required)
    parts = {
        s: torchvision_set(request, outer, OxfordIIITPet, split=s) for s in ("trainval", "test")
    }
    # Labels come from the annotation files (1-based breed ids), so they agree across splits.
    classes = max((d.classes for d in parts.values()), key=len)
    paths, targets, part = gather("pets", parts, part_names={"trainval": "train"})
    return image_files(request, paths, targets, classes, part)


@downstream_set(
    "cars",
    "torchvision.datasets.StanfordCars can no longer download (the original URL is gone): get the "
    "files from a mirror (e.g. Kaggle 'stanford-cars-dataset' plus cars_test_annos_withlabels.mat) and "
    "lay them out as ROOT/stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}; then set data_root=ROOT.",
)
def cars(root: Path | None, request: Request, **_: Any) -> Parts:
    """Stanford Cars (196 models): official train / test (+ carved val)."""
    from torchvision.datasets import StanfordCars

    required = [
        "devkit/cars_meta.mat",
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
        "cars_train",
        "cars_test",
    ]
    outer = locate(request, root, "stanford_cars", required)
    parts = {s: torchvision_set(request, outer, StanfordCars, split=s) for s in ("train", "test")}
    paths, targets, part = gather("cars", parts)
    classes = [str(c) for c in parts["train"].classes]
    return image_files(request, paths, targets, classes, part)


AIRCRAFT_LEVELS = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}


@downstream_set(
    "aircraft",
    "Run torchvision.datasets.FGVCAircraft(ROOT, download=True) once on a machine with internet, "
    "then set data_root=ROOT (it holds fgvc-aircraft-2013b/data/images/, variants.txt and "
    "images_variant_{train,val,test}.txt).",
)
def aircraft(
    root: Path | None, request: Request, annotation_level: str = "variant", **_: Any
) -> Parts:
    """FGVC-Aircraft 2013b: 100 variants by default (``annotation_level``: variant / family /
    manufacturer); official train / val / test."""
    from torchvision.datasets import FGVCAircraft

    if annotation_level not in AIRCRAFT_LEVELS:
        raise UserError(
            f"annotation_level must be one of {', '.join(AIRCRAFT_LEVELS)}, got {annotation_level!r}"
        )
    required = ["data/images", f"data/{AIRCRAFT_LEVELS[annotation_level]}"] + [
        f"data/images_{annotation_level}_{s}.txt" for s in ("train", "val", "test")
    ]
    outer = locate(request, root, "fgvc-aircraft-2013b", required)
    parts = {
        s: torchvision_set(request, outer, FGVCAircraft, split=s, annotation_level=annotation_level)
        for s in ("train", "val", "test")
    }
    paths, targets, part = gather("aircraft", parts)
    return image_files(request, paths, targets, parts["train"].classes, part)


@downstream_set(
    "food101",
    "Run torchvision.datasets.Food101(ROOT, download=True) once on a machine with internet, then pass "
    "root=ROOT (it holds food-101/images/<class>/<id>.jpg and food-101/meta/{train,test}.json).",
)
def food101(root: Path | None, request: Request, **_: Any) -> Parts:
    """Food-101 (101 dishes): official train / test (+ carved val)."""
    from torchvision.datasets import Food101

    outer = locate(request, root, "food-101", ["images", "meta/train.json", "meta/test.json"])
    try:
        parts = {s: torchvision_set(request, outer, Food101, split=s) for s in ("train", "test")}
    except json.JSONDecodeError as err:
        raise request.error(f"unreadable meta/*.json under {str(outer)!r} ({err})") from None
    classes, relabel = _global_classes(parts)
    paths, targets, part = gather("food101", parts, relabel)
    return image_files(request, paths, targets, classes, part)


@downstream_set(
    "sun397",
    "Run torchvision.datasets.SUN397(ROOT, download=True) once on a machine with internet (ROOT/SUN397 "
    "holds ClassName.txt and a/abbey/sun_*.jpg ...); for the standard split also unzip the official "
    "Partitions.zip (vision.princeton.edu/projects/2010/SUN/download/) into ROOT/SUN397/Partitions/; "
    "then set data_root=ROOT.",
)
def sun397(root: Path | None, request: Request, partition: int = 1, **_: Any) -> Parts:
    """SUN397 (397 scenes): the official ``partition`` (1-10, from ``Partitions/``) when present,
    else a seeded half / half per class of every image; val carved from train either way."""
    check_partition(partition)
    base = locate(request, root, "SUN397", ["ClassName.txt"]) / "SUN397"
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

        d = torchvision_set(request, base.parent, SUN397)
        files, labels = file_listing("sun397", d)
        order = np.argsort([str(p) for p in files])  # rglob order is the filesystem's
        paths = [files[i] for i in order]
        half = item_split_mask([labels[i] for i in order], "train", (0.5, 0.0, 0.5), request.seed)
        part = np.where(half, "train", "test").tolist()
    try:
        targets = [index["/".join(p.relative_to(base).parts[1:-1])] for p in paths]
    except KeyError as err:
        raise request.error(f"class {err} is not in {str(base / 'ClassName.txt')!r}") from None
    return image_files(request, paths, targets, classes, part)


@downstream_set(
    "caltech101",
    "Run torchvision.datasets.Caltech101(ROOT, download=True) once on a machine with internet, then "
    "set data_root=ROOT (it holds caltech101/101_ObjectCategories/<class>/image_0001.jpg ..., "
    "BACKGROUND_Google included; it is left out as torchvision does).",
)
def caltech101(root: Path | None, request: Request, train_per_class: int = 30, **_: Any) -> Parts:
    """Caltech-101 (101 classes, background left out): no official split, so ``train_per_class``
    seeded images per class train (val carved from them) and the rest test, the usual protocol."""
    from torchvision.datasets import Caltech101

    if train_per_class < 1:
        raise UserError(f"train_per_class must be >= 1, got {train_per_class!r}")
    # Checked first: torchvision's Caltech101 creates ROOT/caltech101 when missing, and fails
    # with a bare ValueError when BACKGROUND_Google (which it removes) is absent.
    outer = locate(request, root, "caltech101", ["101_ObjectCategories/BACKGROUND_Google"])
    d = torchvision_set(request, outer, Caltech101, target_type="category")
    folder = outer / "caltech101" / "101_ObjectCategories"
    paths = [folder / d.categories[y] / f"image_{i:04d}.jpg" for y, i in zip(d.y, d.index)]
    rng = np.random.default_rng(request.seed)
    labels = np.asarray(d.y)
    which = np.full(len(labels), "test", dtype=object)
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        which[rng.permutation(idx)[:train_per_class]] = "train"
    return image_files(request, paths, d.y, d.categories, which.tolist())


CUB_META = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _read_pairs(path: Path) -> dict[int, str]:
    """``<id> <value>`` lines (CUB's metadata files) as ``{id: value}``."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, value = line.strip().split(" ", 1)
            pairs[int(key)] = value.strip()
    return pairs


def _cub_official(base: Path, request: Request) -> Parts:
    for name in CUB_META:
        if not (base / name).is_file():
            raise request.missing(base / name)
    try:
        images, labels, is_train, names = (_read_pairs(base / name) for name in CUB_META)
        classes = [names[k] for k in sorted(names)]
        ids = sorted(images)
        targets = [int(labels[i]) - 1 for i in ids]
        part = ["train" if is_train[i] == "1" else "test" for i in ids]
    except (KeyError, ValueError) as err:
        raise request.error(
            f"the metadata files in {str(base)!r} disagree or are malformed (at {err})"
        ) from None
    paths = [base / "images" / images[i] for i in ids]
    return image_files(request, paths, targets, classes, part)


@downstream_set(
    "cub",
    "torchvision has no CUB class: extract CUB_200_2011.tgz (data.caltech.edu/records/65de6-vp158) "
    "into ROOT (ROOT/CUB_200_2011/{images/, images.txt, image_class_labels.txt, "
    "train_test_split.txt, classes.txt}), or pass an ImageFolder tree (<class>/<image>, or "
    "train/ test/ folders of those), or a Hugging Face dataset saved with save_to_disk(ROOT).",
)
def cub(root: Path | None, request: Request, **_: Any) -> Parts:
    """CUB-200-2011 (200 birds). Layouts, first match wins: the official one (``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``images/``, in ROOT
    or ROOT/CUB_200_2011); a saved Hugging Face dataset; an ImageFolder tree. Official or
    train/test splits are kept (val carved); a flat tree or single table gets the registry's
    seeded 70/10/20 per-class division."""
    root = require_root("cub", root)
    for base in (root, root / "CUB_200_2011"):
        if (base / "images.txt").is_file():
            return _cub_official(base, request)
    if is_saved_hf_dataset(root):
        source = read_saved_hf(root, request.image_size, channels=3)
    elif find_split_folders(root) or scan_class_folders(root):
        source = read_image_tree(root, request.image_size, channels=3)
    else:
        raise request.missing(root, "has no layout recognised at")
    if request.skip_corrupt:
        source = source.without_unreadable()
    return Parts(source.dataset, source.part)
