"""Builders of tiny synthetic copies of the cross-domain targets, each in its real layout.

Each writes what the set's archive (or BSCD-FSL's and Tseng et al.'s preparation) leaves in
``ROOT``, as :mod:`bmssl.data.crossdomain` reads it: EuroSAT's ``2750/<class>/``, CropDiseases'
``dataset/train/<class>/``, ISIC 2018 Task 3's images and ground-truth CSV, ChestX-ray14's
``images/`` with ``Data_Entry_2017.csv`` (multi-finding and "No Finding" rows included, which
the loader must leave out), CUB's ``CUB_200_2011/images/<class>/``, Stanford Cars' ``cars_train/``
with the devkit's ``.mat`` files, Places365's ``places365_standard/train/<class>/`` and Plantae's
``Plantae/<class>/``. ``needs["test"] = (classes, images each)``: that many classes of a BSCD-FSL set
(all are test classes) and every novel class of a Tseng set (index ``i % 4 == 3``) get that many
images; the others one (the episodes draw from the classes with enough images). See :mod:`reproduce.smoke_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.io import savemat

from reproduce.smoke_data import Builder, pixels, save_jpeg, write_lines

#: classes of the Tseng sets' copies: 5 novel classes (i % 4 == 3) among them
TSENG_CLASSES = 20


def _count(needs: Any, novel: bool = True) -> int:
    wanted = (needs or {}).get("test", (0, 1))[1]
    return max(int(wanted), 1) if novel else 1


def _counts(needs: Any, n_classes: int) -> list[int]:
    """The first ``needs["test"][0]`` classes get the episodes' images, the others one."""
    full = (needs or {}).get("test", (n_classes, 1))[0]
    return [_count(needs, novel=c < full) for c in range(n_classes)]


def _tree(base: Path, rng: np.random.Generator, names: list[str], counts: list[int]) -> None:
    for c, (name, count) in enumerate(zip(names, counts, strict=True)):
        for i in range(count):
            save_jpeg(base / name / f"{name.split('/')[-1]}_{i + 1}.jpg", rng, c, 64, 64)


def build_eurosat(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``2750/<class>/<class>_<n>.jpg`` (EuroSAT's 10 land-cover classes, 64×64 RGB)."""
    names = [
        "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
        "PermanentCrop", "Residential", "River", "SeaLake",
    ]  # fmt: skip
    _tree(root / "2750", rng, names, _counts(needs, len(names)))


def build_cropdiseases(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``dataset/train/<Plant___Disease>/`` (BSCD-FSL's layout; 6 of the 38 classes)."""
    names = [f"Plant{c}___disease_{c}" for c in range(6)]
    _tree(root / "dataset" / "train", rng, names, _counts(needs, len(names)))


def build_isic2018(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``ISIC2018_Task3_Training_Input/ISIC_<id>.jpg`` and the one-hot ground-truth CSV."""
    from bmssl.data.crossdomain import ISIC_CLASSES

    rows = ["image," + ",".join(ISIC_CLASSES)]
    n = 0
    for c, count in enumerate(_counts(needs, len(ISIC_CLASSES))):
        for _ in range(count):
            name = f"ISIC_{24306 + n:07d}"
            save_jpeg(root / "ISIC2018_Task3_Training_Input" / f"{name}.jpg", rng, c, 60, 45)
            rows.append(name + "," + ",".join("1.0" if k == c else "0.0" for k in range(7)))
            n += 1
    truth = "ISIC2018_Task3_Training_GroundTruth"
    write_lines(root / truth / f"{truth}.csv", rows)


def build_chestx(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``images/<id>.png`` (greyscale) and ``Data_Entry_2017.csv``, with rows the BSCD-FSL rule
    leaves out (two findings; "No Finding")."""
    from bmssl.data.crossdomain import CHESTX_CLASSES

    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender"]
    counts = _counts(needs, len(CHESTX_CLASSES))
    findings = [(c, label) for c, label in enumerate(CHESTX_CLASSES) for _ in range(counts[c])]
    findings += [(0, "Atelectasis|Effusion"), (1, "No Finding")]
    for n, (c, label) in enumerate(findings):
        name = f"{n + 1:08d}_000.png"
        grey = pixels(rng, c, 48, 48).mean(axis=2).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey, mode="L").save(root / "images" / name)
        rows.append(f"{name},{label},0,{n + 1},58,M")
    write_lines(root / "Data_Entry_2017.csv", rows)


def _tseng_counts(needs: Any) -> list[int]:
    return [_count(needs, novel=i % 4 == 3) for i in range(TSENG_CLASSES)]


def build_cub_fs(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``CUB_200_2011/images/<NNN.Name>/<Name>_<n>.jpg``."""
    names = [f"{c + 1:03d}.Bird_{c:03d}" for c in range(TSENG_CLASSES)]
    _tree(root / "CUB_200_2011" / "images", rng, names, _tseng_counts(needs))


def build_cars_fs(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``cars_train/<NNNNN>.jpg`` with ``devkit/cars_train_annos.mat`` and ``cars_meta.mat``."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rows: list[tuple[Any, ...]] = []
    for c, count in enumerate(_tseng_counts(needs)):
        for _ in range(count):
            fname = f"{len(rows) + 1:05d}.jpg"
            save_jpeg(root / "cars_train" / fname, rng, c)
            rows.append(
                (np.uint8(2), np.uint8(2), np.uint8(100), np.uint8(80), np.uint8(c + 1), fname)
            )
    annotations = np.zeros(len(rows), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        annotations[i] = row
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annotations})
    names = np.array([f"Make Model {2000 + c} #{c}" for c in range(TSENG_CLASSES)], dtype=object)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names[None]})


def build_places(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``places365_standard/train/<scene>/<n>.jpg``."""
    names = [f"scene_{c:03d}" for c in range(TSENG_CLASSES)]
    _tree(root / "places365_standard" / "train", rng, names, _tseng_counts(needs))


def build_plantae(root: Path, rng: np.random.Generator, needs: Any = None) -> None:
    """``Plantae/<species>/<n>.jpg``; every class gets the same count, so the loader's order
    (ascending count, ties by name) is the name order and the novel classes get the images."""
    names = [f"Species_{c:03d}" for c in range(TSENG_CLASSES)]
    _tree(root / "Plantae", rng, names, [_count(needs)] * TSENG_CLASSES)


CROSSDOMAIN: dict[str, Builder] = {
    "eurosat": build_eurosat, "cropdiseases": build_cropdiseases, "isic2018": build_isic2018,
    "chestx": build_chestx, "cub-fs": build_cub_fs, "cars-fs": build_cars_fs,
    "places": build_places, "plantae": build_plantae,
}  # fmt: skip
