"""Cross-domain few-shot targets, read from a local root in each set's usual layout.

Two benchmarks evaluate a model pre-trained on one domain (miniImageNet) on others:

- BSCD-FSL (Guo et al. 2020): ``eurosat``, ``cropdiseases``, ``isic2018``, ``chestx``. Every
  class is a test class, so these are evaluation sets: ``split="test"`` gives every class
  (``train``/``val`` of the few-shot protocol are refused); ``protocol="unlabeled"`` or
  ``"supervised"`` use them like any labelled set.
- The fine-grained sets of Tseng et al. 2020 (after Chen et al. 2019): ``cub-fs``, ``cars-fs``,
  ``places``, ``plantae``. Classes in the benchmark's order are cut by index: ``i % 2 == 0`` base
  (``train``), ``i % 4 == 1`` ``val``, ``i % 4 == 3`` novel (``test``).

Layouts (each loader also names them in its missing-root message):

=================  =========================================================================
``eurosat``        ``2750/<class>/*.jpg`` (the zip's layout) or torchvision's ``eurosat/2750``
``cropdiseases``   ``dataset/train/<class>/`` (BSCD-FSL's) or ``train/<class>/``
``isic2018``       ``ISIC2018_Task3_Training_Input/*.jpg`` and
                   ``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``
                   (one-hot columns MEL, NV, BCC, AKIEC, BKL, DF, VASC)
``chestx``         ``images/*.png`` and ``Data_Entry_2017.csv``: the images whose only finding
                   is one of BSCD-FSL's seven labels
``cub-fs``         ``CUB_200_2011/images/<class>/`` (or ``images/<class>/``), classes sorted
``cars-fs``        ``cars_train/`` with ``devkit/cars_train_annos.mat`` and ``devkit/cars_meta.mat``
                   (or torchvision's ``stanford_cars/`` around them); class order: the devkit's
``places``         ``places365_standard/train/<class>/`` (or ``train/<class>/``): classes sorted,
                   the first 200 files of each by name (as Tseng et al.)
``plantae``        ``Plantae/<class>/`` (or ``<class>/``): the 200 classes with most images,
                   in ascending count (ties by name), at most 600 images each, drawn seeded
=================  =========================================================================

Deviations: Tseng et al. draw Plantae's 600 images and break its count ties without a seed;
here both are fixed (seed 0, then class name), so a copy of the set gives the same split.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.data.base import FileImageDataset, ImageDataset
from bmssl.data.folders import scan_class_folders
from bmssl.data.registry import register_dataset, require_root
from bmssl.data.sources import LabelledSource, finish_source
from bmssl.errors import DataNotFoundError, UserError

BSCD_SETS = ("eurosat", "cropdiseases", "isic2018", "chestx")
TSENG_SETS = ("cub-fs", "cars-fs", "places", "plantae")
ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
CHESTX_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax",
)  # fmt: skip
PLACES_PER_CLASS = 200
PLANTAE_CLASSES, PLANTAE_PER_CLASS = 200, 600

Reader = Callable[[Path, int], tuple[list[Path], list[int], list[str]]]


def tseng_part(n_classes: int) -> list[str]:
    """The split of each class index: ``i%2==0`` train, ``i%4==1`` val, ``i%4==3`` test."""
    return ["train" if i % 2 == 0 else "val" if i % 4 == 1 else "test" for i in range(n_classes)]


def _first_existing(root: Path, candidates: Sequence[str], name: str, layout: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    raise DataNotFoundError(
        f"dataset {name!r}: none of {', '.join(candidates)} under {str(root)!r}; expected {layout}"
    )


def _class_tree(folder: Path, name: str) -> tuple[list[Path], list[int], list[str]]:
    """Images of a ``<class>/<image>`` tree, classes sorted by name."""
    classes = scan_class_folders(folder)
    if not classes:
        raise DataNotFoundError(f"dataset {name!r}: no <class>/<image> folders in {str(folder)!r}")
    names = list(classes)
    paths = [p for c in names for p in classes[c]]
    targets = [i for i, c in enumerate(names) for _ in classes[c]]
    return paths, targets, names


def read_eurosat(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    folder = _first_existing(root, ("2750", "eurosat/2750"), "eurosat", "2750/<class>/*.jpg")
    return _class_tree(folder, "eurosat")


def read_cropdiseases(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    folder = _first_existing(
        root, ("dataset/train", "train"), "cropdiseases", "dataset/train/<class>/*.jpg"
    )
    return _class_tree(folder, "cropdiseases")


def _read_csv(path: Path, name: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataNotFoundError(f"dataset {name!r}: {str(path)!r} not found")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_isic2018(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    truth = "ISIC2018_Task3_Training_GroundTruth.csv"
    csv_path = root / "ISIC2018_Task3_Training_GroundTruth" / truth
    rows = _read_csv(csv_path if csv_path.is_file() else root / truth, "isic2018")
    images = root / "ISIC2018_Task3_Training_Input"
    paths, targets = [], []
    for row in rows:
        try:
            scores = [float(row[c]) for c in ISIC_CLASSES]
        except (KeyError, ValueError):
            raise UserError(
                f"dataset 'isic2018': {truth} needs columns image, {', '.join(ISIC_CLASSES)} with "
                f"0/1 values; row {row.get('image', '?')!r} does not have them"
            ) from None
        paths.append(images / f"{row['image']}.jpg")
        targets.append(int(np.argmax(scores)))
    return paths, targets, list(ISIC_CLASSES)


def read_chestx(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    rows = _read_csv(root / "Data_Entry_2017.csv", "chestx")
    images = root / "images"
    index = {c: i for i, c in enumerate(CHESTX_CLASSES)}
    paths, targets = [], []
    for row in rows:
        finding = row.get("Finding Labels", "")
        if finding in index:  # one finding only, and one of the seven (BSCD-FSL's rule)
            paths.append(images / row["Image Index"])
            targets.append(index[finding])
    return paths, targets, list(CHESTX_CLASSES)


def read_cub(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    folder = _first_existing(
        root, ("CUB_200_2011/images", "images"), "cub-fs", "CUB_200_2011/images/<class>/*.jpg"
    )
    return _class_tree(folder, "cub-fs")


def read_cars(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    from scipy.io import loadmat

    base = root / "stanford_cars" if (root / "stanford_cars").is_dir() else root
    annos, meta = base / "devkit" / "cars_train_annos.mat", base / "devkit" / "cars_meta.mat"
    for path in (annos, meta, base / "cars_train"):
        if not path.exists():
            raise DataNotFoundError(
                f"dataset 'cars-fs': {str(path)!r} not found; expected cars_train/ and "
                "devkit/{cars_train_annos.mat, cars_meta.mat}"
            )
    classes = [str(c) for c in loadmat(meta, squeeze_me=True)["class_names"].tolist()]
    rows = loadmat(annos, squeeze_me=True)["annotations"]
    paths = [base / "cars_train" / str(r["fname"]) for r in rows]
    targets = [int(r["class"]) - 1 for r in rows]
    return paths, targets, classes


def read_places(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    folder = _first_existing(
        root, ("places365_standard/train", "train"), "places", "places365_standard/train/<class>/"
    )
    classes = scan_class_folders(folder)  # each class's files sorted by name
    if not classes:
        raise DataNotFoundError(f"dataset 'places': no <class>/<image> folders in {str(folder)!r}")
    names = list(classes)
    paths = [p for c in names for p in classes[c][:PLACES_PER_CLASS]]
    targets = [i for i, c in enumerate(names) for _ in classes[c][:PLACES_PER_CLASS]]
    return paths, targets, names


def read_plantae(root: Path, _: int) -> tuple[list[Path], list[int], list[str]]:
    folder = root / "Plantae" if (root / "Plantae").is_dir() else root
    classes = scan_class_folders(folder)
    if not classes:
        raise DataNotFoundError(f"dataset 'plantae': no <class>/<image> folders in {str(folder)!r}")
    by_count = sorted(classes, key=lambda c: (len(classes[c]), c))[-PLANTAE_CLASSES:]
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i, name in enumerate(by_count):
        files = classes[name]
        chosen = sorted(rng.permutation(len(files))[:PLANTAE_PER_CLASS])
        paths += [files[j] for j in chosen]
        targets += [i] * len(chosen)
    return paths, targets, by_count


READERS: dict[str, Reader] = {
    "eurosat": read_eurosat, "cropdiseases": read_cropdiseases, "isic2018": read_isic2018,
    "chestx": read_chestx, "cub-fs": read_cub, "cars-fs": read_cars, "places": read_places,
    "plantae": read_plantae,
}  # fmt: skip


def _check_files(paths: list[Path], name: str, root: Path) -> None:
    if not paths:
        raise DataNotFoundError(f"dataset {name!r}: no images listed under {str(root)!r}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"dataset {name!r}: {len(missing)} of {len(paths)} listed images are missing under "
            f"{str(root)!r} (first: {str(missing[0])!r})"
        )


def load_target(
    name: str,
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 84,
    preload: bool = False,
    skip_corrupt: bool = False,
) -> ImageDataset:
    """One split of a cross-domain target (see the module docstring for the splits)."""
    root = require_root(name, root)
    if name in BSCD_SETS and protocol == "fewshot" and split != "test":
        raise UserError(
            f"{name} is a cross-domain evaluation set: every class is a test class (BSCD-FSL), "
            f"so it has no few-shot {split!r} split; ask for split='test', or "
            "protocol='unlabeled' for all its images"
        )
    paths, targets, classes = READERS[name](root, image_size)
    _check_files(paths, name, root)
    dataset = FileImageDataset(paths, targets, classes, image_size=image_size, channels=3)
    part = None
    if name in TSENG_SETS:
        by_class = tseng_part(len(classes))
        part = np.asarray([by_class[t] for t in targets], dtype=object)
    elif protocol == "fewshot":  # every class is a test class: the test split is all of them
        split, protocol = "train", "unlabeled"
    source = LabelledSource(dataset, part, f"{name} at {str(root)!r}")
    return finish_source(source, split, protocol, skip_corrupt, preload)


HOW_TO_GET = {
    "eurosat": "python -m bmssl.data fetch eurosat ROOT downloads it (RGB zip, pinned md5); or "
    "unzip EuroSAT.zip into ROOT so that ROOT/2750/<class>/ holds the images",
    "cropdiseases": "download the Kaggle 'plant-disease' (New Plant Diseases Dataset) archive "
    "(BSCD-FSL's CropDiseases) and lay it out as ROOT/dataset/train/<class>/*.jpg",
    "isic2018": "download ISIC 2018 Task 3 training images and ground truth "
    "(challenge.isic-archive.com, registration needed) into ROOT/ISIC2018_Task3_Training_Input/ "
    "and ROOT/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
    "chestx": "download ChestX-ray14 (NIH, nihcc.app.box.com/v/ChestXray-NIHCC): every "
    "images_*.tar.gz extracted into ROOT/images/ and Data_Entry_2017.csv into ROOT",
    "cub-fs": "extract CUB_200_2011.tgz (data.caltech.edu/records/65de6-vp158) into ROOT so "
    "that ROOT/CUB_200_2011/images/<class>/ holds the images",
    "cars-fs": "get Stanford Cars' cars_train/ and car_devkit (devkit/cars_train_annos.mat, "
    "devkit/cars_meta.mat) from a mirror (the original URL is gone) into ROOT",
    "places": "extract places365standard_easyformat.tar (data.csail.mit.edu/places/places365) "
    "into ROOT so that ROOT/places365_standard/train/<class>/ holds the images",
    "plantae": "get Tseng et al.'s plantae.tar.gz (the iNat2017 Plantae images; see "
    "github.com/hytseng0509/CrossDomainFewShot) and extract it into ROOT (ROOT/Plantae/<class>/)",
}


def _register(name: str) -> None:
    def factory(root: Path | None, split: str, protocol: str, **options: Any) -> ImageDataset:
        known = {k: options[k] for k in ("image_size", "preload", "skip_corrupt") if k in options}
        return load_target(name, root, split, protocol, **known)

    register_dataset(name, HOW_TO_GET[name])(factory)


for _name in READERS:
    _register(_name)

__all__ = ["BSCD_SETS", "HOW_TO_GET", "TSENG_SETS", "load_target", "tseng_part"]
