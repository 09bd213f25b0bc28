"""Builders of tiny synthetic copies of BiSSL's 14 downstream sets, each in its real layout.

Each writes what ``torchvision.datasets.X(ROOT, download=True)`` (or the official archive, for
CUB and SUN397's partitions) leaves in ``ROOT``. Class lists are complete wherever the set ships
one (CIFAR's meta, Flowers' 102, the cars, aircraft, CUB and SUN397 lists, Caltech's folders,
Food-101's meta; VOC's 20 classes), so heads have the real size; images exist for the first
:data:`IMAGED` classes only, one per class and split, except that a set whose ``val`` split is
carved out of ``train`` gets :data:`CARVED` classes with enough training images for a carved
``val`` image, and Caltech-101 (whose protocol trains on 30 images per class and tests on the
rest) :data:`CALTECH` classes with more than 30. Evaluation and head warm-up embed every image
of a split, so the images, not the classes, are what costs. See :mod:`reproduce.smoke_data`.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import savemat

from reproduce.smoke_data import Builder, pixels, save_jpeg, write_lines, write_text

#: classes with images (the first ones of each set)
IMAGED = 10
#: (classes, training images each) so that a 10% carved val split takes one image of each
CARVED = (2, 6)
#: (classes, images each) of Caltech-101: 30 train (3 of them carved as val) and 2 test
CALTECH = (2, 32)


def train_counts(n_classes: int) -> list[int]:
    """Training images of each class: :data:`CARVED`, then one, then none."""
    return [CARVED[1] if c < CARVED[0] else int(c < IMAGED) for c in range(n_classes)]


def split_counts(n_classes: int) -> list[int]:
    """Images of each class in an official val or test split: one, then none."""
    return [int(c < IMAGED) for c in range(n_classes)]


def _pickle(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def _planes(rng: np.random.Generator, labels: list[int], size: int) -> np.ndarray:
    """``uint8 [N, 3, size, size]`` images of ``labels``."""
    return np.stack([pixels(rng, c, size, size).transpose(2, 0, 1) for c in labels])


def _labels(counts: list[int]) -> list[int]:
    return [c for c, n in enumerate(counts) for _ in range(n)]


# ------------------------------------------------------------------------ held as arrays


def build_cifar10(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``, ``batches.meta`` (pickles)."""
    base = root / "cifar-10-batches-py"
    train, test = _labels(train_counts(10)), _labels(split_counts(10))
    for i in range(5):
        labels = train[i::5]
        _pickle(
            base / f"data_batch_{i + 1}",
            {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": labels,
                "data": _planes(rng, labels, 32).reshape(len(labels), -1),
                "filenames": [f"image_{i}_{k}.png" for k in range(len(labels))],
            },
        )
    _pickle(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test,
            "data": _planes(rng, test, 32).reshape(len(test), -1),
            "filenames": [f"test_{k}.png" for k in range(len(test))],
        },
    )
    names = [f"class{c}" for c in range(10)]
    _pickle(base / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names})


def build_cifar100(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``cifar-100-python/{train,test,meta}`` (pickles with fine and coarse labels)."""
    base = root / "cifar-100-python"
    for part, labels in (
        ("train", _labels(train_counts(100))),
        ("test", _labels(split_counts(100))),
    ):
        _pickle(
            base / part,
            {
                "filenames": [f"{part}_{k}.png" for k in range(len(labels))],
                "batch_label": f"{part}ing batch 1 of 1",
                "fine_labels": labels,
                "coarse_labels": [c // 5 for c in labels],
                "data": _planes(rng, labels, 32).reshape(len(labels), -1),
            },
        )
    fine = [f"fine{c:02d}" for c in range(100)]
    _pickle(
        base / "meta",
        {"fine_label_names": fine, "coarse_label_names": [f"coarse{c}" for c in range(20)]},
    )


def build_stl10(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``stl10_binary/{train,test}_{X,y}.bin`` (column-major 96×96 planes, 1-based labels) and
    ``class_names.txt``; the 2.6 GB ``unlabeled_X.bin``, which the loader never reads, is left out."""
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    for part, counts in (("train", train_counts(10)), ("test", split_counts(10))):
        labels = _labels(counts)
        _planes(rng, labels, 96).transpose(0, 1, 3, 2).tofile(base / f"{part}_X.bin")
        (np.asarray(labels, dtype=np.uint8) + 1).tofile(base / f"{part}_y.bin")
    write_lines(base / "class_names.txt", [f"class{c}" for c in range(10)])
    n_train = sum(train_counts(10))
    write_lines(base / "fold_indices.txt", [" ".join(map(str, range(n_train)))] * 10)


def build_fashionmnist(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (IDX files)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, counts in (("train", train_counts(10)), ("t10k", split_counts(10))):
        labels = np.asarray(_labels(counts), dtype=np.uint8)
        images = _planes(rng, labels.tolist(), 28)[:, 0]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.tobytes()
        )


# ---------------------------------------------------------------------------- image files


def build_dtd(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``dtd/dtd/images/<class>/<class>_NNNN.jpg`` and ``labels/{train,val,test}{1..10}.txt``
    (each partition assigns the images to the splits differently)."""
    base = root / "dtd" / "dtd"
    names = [f"texture{c:02d}" for c in range(IMAGED)]  # DTD's classes are those its lists name
    for c, name in enumerate(names):
        for k in range(3):
            save_jpeg(base / "images" / name / f"{name}_{k + 1:04d}.jpg", rng, c)
    for p in range(1, 11):
        for s, split in enumerate(("train", "val", "test")):
            rows = [f"{n}/{n}_{(s + p) % 3 + 1:04d}.jpg" for n in names]
            write_lines(base / "labels" / f"{split}{p}.txt", rows)


def build_flowers102(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat`` and ``setid.mat`` (the 102
    class names are torchvision's)."""
    base = root / "flowers-102"
    labels: list[int] = []
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for c in range(IMAGED):
        for key in ids:
            labels.append(c + 1)
            ids[key].append(len(labels))
            save_jpeg(base / "jpg" / f"image_{len(labels):05d}.jpg", rng, c)
    savemat(base / "imagelabels.mat", {"labels": np.asarray(labels, dtype=np.uint8)[None]})
    savemat(base / "setid.mat", {k: np.asarray(v, dtype=np.uint16)[None] for k, v in ids.items()})


def build_pets(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``oxford-iiit-pet/images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``
    (breed ids of 37: cats capitalised, dogs not; the classes are those the lists name)."""
    base = root / "oxford-iiit-pet"
    breeds = [f"Cat_breed{c:02d}" if c < 12 else f"dog_breed{c:02d}" for c in range(37)]
    n = 0
    for part, counts in (("trainval", train_counts(37)), ("test", split_counts(37))):
        rows = []
        for c, count in enumerate(counts):
            for _ in range(count):
                n += 1
                save_jpeg(base / "images" / f"{breeds[c]}_{n}.jpg", rng, c)
                rows.append(f"{breeds[c]}_{n} {c + 1} {1 if c < 12 else 2} {c % 25 + 1}")
        write_lines(base / "annotations" / f"{part}.txt", rows)


def _cars_annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    out = np.zeros(len(rows), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        out[i] = (np.uint8(2), np.uint8(2), np.uint8(100), np.uint8(80), np.uint8(cls), fname)
    return out


def build_cars(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat,
    devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}`` (196 models)."""
    base = root / "stanford_cars"
    for part, counts in (("train", train_counts(196)), ("test", split_counts(196))):
        rows: list[tuple[str, int]] = []
        for c in _labels(counts):
            fname = f"{len(rows) + 1:05d}.jpg"
            save_jpeg(base / f"cars_{part}" / fname, rng, c)
            rows.append((fname, c + 1))
        mat = base / (
            "devkit/cars_train_annos.mat" if part == "train" else "cars_test_annos_withlabels.mat"
        )
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"annotations": _cars_annotations(rows)})
    names = np.array([f"Make Model {2000 + c % 13} #{c}" for c in range(196)], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None]})


def build_aircraft(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``fgvc-aircraft-2013b/data/images/<id>.jpg`` with the variant, family and manufacturer
    lists and ``images_<level>_{train,val,test}.txt`` (100 variants, some names with spaces)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"Model {c:03d}" if c % 3 else f"M-{c:03d}" for c in range(100)]
    levels = {
        "variant": (variants, lambda c: variants[c]),
        "family": ([f"Family {f:02d}" for f in range(70)], lambda c: f"Family {c % 70:02d}"),
        "manufacturer": ([f"Maker{m:02d}" for m in range(30)], lambda c: f"Maker{c % 30:02d}"),
    }
    lists = {
        "variant": "variants.txt",
        "family": "families.txt",
        "manufacturer": "manufacturers.txt",
    }
    for level, (names, _) in levels.items():
        write_lines(data / lists[level], names)
    n = 0
    for split in ("train", "val", "test"):
        ids = []
        for c in range(IMAGED):
            n += 1
            ids.append((f"{1000000 + n:07d}", c))
            save_jpeg(data / "images" / f"{1000000 + n:07d}.jpg", rng, c)
        for level, (_, name_of) in levels.items():
            write_lines(data / f"images_{level}_{split}.txt", [f"{i} {name_of(c)}" for i, c in ids])


def build_food101(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``food-101/images/<class>/<id>.jpg`` and ``meta/{train,test}.{json,txt}``,
    ``classes.txt``, ``labels.txt`` (101 dishes)."""
    base = root / "food-101"
    names = [f"dish_{c:03d}" for c in range(101)]
    n = 0
    for part, counts in (("train", train_counts(101)), ("test", split_counts(101))):
        meta: dict[str, list[str]] = {name: [] for name in names}
        for c in _labels(counts):
            n += 1
            save_jpeg(base / "images" / names[c] / f"{100000 + n}.jpg", rng, c)
            meta.setdefault(names[c], []).append(f"{names[c]}/{100000 + n}")
        write_text(base / "meta" / f"{part}.json", json.dumps(meta))
        write_lines(base / "meta" / f"{part}.txt", [r for rows in meta.values() for r in rows])
    write_lines(base / "meta" / "classes.txt", names)
    write_lines(base / "meta" / "labels.txt", [n.replace("_", " ").title() for n in names])


def build_sun397(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``SUN397/ClassName.txt``, ``SUN397/<l>/<class>[/<sub>]/sun_<id>.jpg`` and the official
    ``Partitions/{Training,Testing}_{01..10}.txt`` (397 scenes, some two levels deep)."""
    base = root / "SUN397"
    letters = "abcdefghijklmnopqrstuvwxyz"
    classes = [
        f"/{letters[c % 26]}/{letters[c % 26]}scene{c:03d}" + ("/indoor" if c % 7 == 0 else "")
        for c in range(397)
    ]
    write_lines(base / "ClassName.txt", classes)
    lists: dict[str, list[str]] = {"Training": [], "Testing": []}
    n = 0
    for kind, counts in (("Training", train_counts(397)), ("Testing", split_counts(397))):
        for c in _labels(counts):
            n += 1
            rel = f"{classes[c]}/sun_{n:08x}.jpg"
            save_jpeg(base / rel.lstrip("/"), rng, c)
            lists[kind].append(rel)
    for p in range(1, 11):
        for kind, rows in lists.items():
            write_lines(base / "Partitions" / f"{kind}_{p:02d}.txt", rows)


def build_caltech101(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``caltech101/101_ObjectCategories/<class>/image_NNNN.jpg`` with ``BACKGROUND_Google``
    (101 classes besides it)."""
    base = root / "caltech101" / "101_ObjectCategories"
    names = ["Faces", "Faces_easy", "Leopards", "Motorbikes"] + [
        f"object{c:03d}" for c in range(97)
    ]
    for c, name in enumerate(["BACKGROUND_Google", *names]):
        count = CALTECH[1] if 1 <= c <= CALTECH[0] else int(c <= IMAGED) + (c == 0)
        (base / name).mkdir(parents=True)
        for k in range(count):
            save_jpeg(base / name / f"image_{k + 1:04d}.jpg", rng, c)


def build_cub(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``CUB_200_2011/`` with ``images/<NNN.Name>/<Name>_<n>.jpg``, ``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``bounding_boxes.txt``
    (200 birds)."""
    base = root / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{c:03d}" for c in range(200)]
    images, labels, split, boxes = [], [], [], []
    items = [(c, 1) for c in _labels(train_counts(200))] + [(c, 0) for c in range(IMAGED)]
    for i, (c, is_train) in enumerate(items, 1):
        rel = f"{names[c]}/{names[c][4:]}_{i:04d}.jpg"
        save_jpeg(base / "images" / rel, rng, c)
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c + 1}")
        split.append(f"{i} {is_train}")
        boxes.append(f"{i} 2.0 2.0 100.0 80.0")
    for name, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
        ("classes.txt", [f"{c + 1} {n}" for c, n in enumerate(names)]),
    ):
        write_lines(base / name, rows)


def _voc_xml(image_id: str, objects: list[tuple[str, bool]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(hard)}</difficult><bndbox><xmin>2</xmin><ymin>2</ymin>"
        f"<xmax>100</xmax><ymax>80</ymax></bndbox></object>"
        for name, hard in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>112</width><height>84</height><depth>3</depth></size>{body}</annotation>"
    )


def build_voc2007(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """``VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt}``: each
    image holds its class, every other one a second class, every fifth a difficult third."""
    from bmssl.data.downstream import VOC_CLASSES

    base = root / "VOCdevkit" / "VOC2007"
    n = 0
    for part, counts in (("trainval", train_counts(20)), ("test", split_counts(20))):
        ids = []
        for c in _labels(counts):
            n += 1
            image_id = f"{n:06d}"
            objects = [(VOC_CLASSES[c], False)]
            if n % 2:
                objects.append((VOC_CLASSES[(c + 7) % 20], False))
            if n % 5 == 0:
                objects.append((VOC_CLASSES[(c + 3) % 20], True))
            save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", rng, c)
            write_text(base / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, objects))
            ids.append(image_id)
        write_lines(base / "ImageSets" / "Main" / f"{part}.txt", ids)


DOWNSTREAM: dict[str, Builder] = {
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "dtd": build_dtd,
    "flowers102": build_flowers102,
    "pets": build_pets,
    "cars": build_cars,
    "aircraft": build_aircraft,
    "food101": build_food101,
    "sun397": build_sun397,
    "caltech101": build_caltech101,
    "stl10": build_stl10,
    "fashionmnist": build_fashionmnist,
    "voc2007": build_voc2007,
    "cub": build_cub,
}
