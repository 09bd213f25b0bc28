"""Small fake dataset roots for the data tests, each in its set's on-disk format.

Every fake image of class ``c`` is filled with a colour of its own (``colour(c)`` for the
downstream roots, ``tree_colour(c)`` for ImageFolder trees and tables), so a loaded item's pixels
tell which class the fake root gave it. Nothing here is downloaded; roots are a few kilobytes.

Use: ``from tests.fakes import FAKES, write_class_tree, ...``, or the fixtures of
``tests/conftest.py`` (``fake_downstream``, ``class_tree``).
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from bmssl.data.downstream import VOC_CLASSES

N = 5  # classes with images in every fake root
SIZE = 16  # image_size asked of every loader (fakes are 10x8 files or the native tensor size)
SUPERVISED_SIZES = {"train": 5 * N, "val": 1 * N, "test": 2 * N}  # 6 train / 2 test per class
OFFICIAL_VAL_SIZES = {"train": 3 * N, "val": 2 * N, "test": 2 * N}


def colour(c: int) -> tuple[int, int, int]:
    return (20 + 45 * c, 220 - 45 * c, 100)


def save_image(path: Path, c: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 8), colour(c)).save(path, format="JPEG", quality=95)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class Fake:
    """A fake root and what its loader should report."""

    root: Path
    num_classes: int
    sizes: dict[str, int] = field(default_factory=lambda: dict(SUPERVISED_SIZES))
    colour_of: dict[int, int] = field(default_factory=lambda: {c: c for c in range(N)})
    remove: str = ""  # a part whose absence must give DataNotFoundError naming it
    options: dict[str, Any] = field(default_factory=dict)
    channels: int = 3
    fewshot: bool = True


# ------------------------------------------------------------------------------------ fake roots


def per_class_parts(counts: dict[str, int]) -> list[tuple[int, str, int]]:
    """``(class, part, k)`` for ``counts[part]`` images of each of the N classes."""
    return [(c, p, k) for c in range(N) for p, n in counts.items() for k in range(n)]


def write_pickle(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f)


def cifar_batch(
    labels: list[int], key: str, paint: Callable[[int], tuple[int, int, int]]
) -> dict[str, Any]:
    """A CIFAR pickle's content: 32x32 images, each filled with ``paint(label)``."""
    pixels = np.array([paint(c) for c in labels], dtype=np.uint8)[:, :, None]
    return {"data": np.repeat(pixels, 32 * 32, axis=2).reshape(len(labels), -1), key: labels}


def fake_cifar(tmp: Path, hundred: bool) -> Fake:
    base = tmp / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    key = "fine_labels" if hundred else "labels"
    train = [c for c in range(N) for _ in range(6)]
    test = [c for c in range(N) for _ in range(2)]
    if hundred:
        write_pickle(base / "train", cifar_batch(train, key, colour))
        write_pickle(base / "test", cifar_batch(test, key, colour))
        write_pickle(base / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)]})
        return Fake(tmp, 100, remove="cifar-100-python/meta")
    for i in range(5):
        write_pickle(base / f"data_batch_{i + 1}", cifar_batch(train[i::5], key, colour))
    write_pickle(base / "test_batch", cifar_batch(test, key, colour))
    write_pickle(base / "batches.meta", {"label_names": [f"name{i}" for i in range(10)]})
    return Fake(tmp, 10, remove="cifar-10-batches-py/test_batch", fewshot=False)


def fake_dtd(tmp: Path) -> Fake:
    names = ["banded", "blotchy", "braided", "bubbly", "bumpy"]
    base = tmp / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, part, k in per_class_parts({"train": 3, "val": 2, "test": 2}):
        rel = f"{names[c]}/{names[c]}_{part}{k}.jpg"
        save_image(base / "images" / rel, c)
        lines[part].append(rel)
    for part, rels in lines.items():
        write(base / "labels" / f"{part}1.txt", "\n".join(rels) + "\n")
    return Fake(tmp, N, OFFICIAL_VAL_SIZES, remove="dtd/dtd/labels/test1.txt")


def fake_flowers(tmp: Path) -> Fake:
    base = tmp / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for i, (c, part, _) in enumerate(per_class_parts({"trnid": 3, "valid": 2, "tstid": 2}), 1):
        save_image(base / "jpg" / f"image_{i:05d}.jpg", c)
        labels.append(c + 1)
        ids[part].append(i)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array(v, dtype=np.uint16) for k, v in ids.items()})
    return Fake(tmp, 102, OFFICIAL_VAL_SIZES, remove="flowers-102/setid.mat")


def fake_pets(tmp: Path) -> Fake:
    breeds = ["Abyssinian", "basset_hound", "Bengal", "beagle", "Birman"]
    base = tmp / "oxford-iiit-pet"
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for c, part, k in per_class_parts({"trainval": 6, "test": 2}):
        image_id = f"{breeds[c]}_{part}{k}"
        save_image(base / "images" / f"{image_id}.jpg", c)
        lines[part].append(f"{image_id} {c + 1} {1 + c % 2} 1")
    for part, rows in lines.items():
        write(base / "annotations" / f"{part}.txt", "\n".join(rows) + "\n")
    return Fake(tmp, N, remove="oxford-iiit-pet/annotations/test.txt")


def fake_cars(tmp: Path) -> Fake:
    base = tmp / "stanford_cars"
    annos: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for c, part, _ in per_class_parts({"train": 6, "test": 2}):
        fname = f"{len(annos[part]) + 1:05d}.jpg"
        save_image(base / f"cars_{part}" / fname, c)
        annos[part].append((fname, c + 1))

    def struct_array(rows: list[tuple[str, int]]) -> np.ndarray:
        out = np.zeros(len(rows), dtype=[("fname", "O"), ("class", "O")])
        for i, (fname, cls) in enumerate(rows):
            out[i] = (fname, np.uint8(cls))
        return out

    names = np.array([f"Make Model {2000 + c}" for c in range(N)], dtype=object)
    (base / "devkit").mkdir()
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": struct_array(annos["train"])})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": struct_array(annos["test"])})
    return Fake(tmp, N, remove="stanford_cars/devkit/cars_meta.mat")


def fake_aircraft(tmp: Path) -> Fake:
    variants = ["707-320", "727-200", "A300B4", "Boeing 717", "DHC-8-100"]
    data = tmp / "fgvc-aircraft-2013b" / "data"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (c, part, _) in enumerate(per_class_parts({"train": 3, "val": 2, "test": 2})):
        save_image(data / "images" / f"{1000000 + i}.jpg", c)
        lines[part].append(f"{1000000 + i} {variants[c]}")
    write(data / "variants.txt", "\n".join(variants) + "\n")
    for part, rows in lines.items():
        write(data / f"images_variant_{part}.txt", "\n".join(rows) + "\n")
    return Fake(
        tmp, N, OFFICIAL_VAL_SIZES, remove="fgvc-aircraft-2013b/data/images_variant_val.txt"
    )


def fake_food(tmp: Path) -> Fake:
    names = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"]
    base = tmp / "food-101"
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for c, part, k in per_class_parts({"train": 6, "test": 2}):
        rel = f"{names[c]}/{part}{k}"
        save_image(base / "images" / f"{rel}.jpg", c)
        meta[part].setdefault(names[c], []).append(rel)
    for part, content in meta.items():
        write(base / "meta" / f"{part}.json", json.dumps(content))
    return Fake(tmp, N, remove="food-101/meta/train.json")


SUN_CLASSES = ["/a/abbey", "/b/bakery/shop", "/c/canyon", "/d/desert/sand", "/e/elevator/door"]


def fake_sun(tmp: Path, partitions: bool = True, per_class: int = 9) -> Fake:
    base = tmp / "SUN397"
    write(base / "ClassName.txt", "\n".join(SUN_CLASSES) + "\n")
    lists: dict[str, list[str]] = {"Training": [], "Testing": []}
    for c in range(N):
        for k in range(per_class):
            rel = f"{SUN_CLASSES[c]}/sun_{c}x{k:03d}.jpg"
            save_image(base / rel.lstrip("/"), c)
            if k < 6:
                lists["Training"].append(rel)
            elif k < 8:
                lists["Testing"].append(rel)  # image 8 is listed nowhere: must be left out
    if partitions:
        for kind, rows in lists.items():
            write(base / "Partitions" / f"{kind}_01.txt", "\n".join(rows) + "\n")
    return Fake(tmp, N, remove="SUN397/ClassName.txt")


def fake_caltech(tmp: Path) -> Fake:
    names = ["Faces", "Leopards", "accordion", "airplanes", "anchor"]  # torchvision's sorted order
    base = tmp / "caltech101" / "101_ObjectCategories"
    for k in range(2):
        save_image(base / "BACKGROUND_Google" / f"image_{k + 1:04d}.jpg", 0)
    for c in range(N):
        for k in range(8):
            save_image(base / names[c] / f"image_{k + 1:04d}.jpg", c)
    return Fake(
        tmp,
        N,
        remove="caltech101/101_ObjectCategories/BACKGROUND_Google",
        options={"train_per_class": 6},
    )


def stl_image(c: int) -> np.ndarray:
    """A 96x96 image of class ``c`` whose top row is white, to catch a missing transpose."""
    image = np.empty((3, 96, 96), dtype=np.uint8)
    image[:] = np.array(colour(c), dtype=np.uint8)[:, None, None]
    image[:, 0, :] = 255
    return image


def fake_stl(tmp: Path) -> Fake:
    base = tmp / "stl10_binary"
    base.mkdir(parents=True)
    for part, n in (("train", 6), ("test", 2)):
        labels = [c for c in range(N) for _ in range(n)]
        # On disk each channel is stored column-major (transposed), as STL-10's binaries are.
        stored = np.stack([stl_image(c).transpose(0, 2, 1) for c in labels])
        stored.tofile(base / f"{part}_X.bin")
        (np.array(labels, dtype=np.uint8) + 1).tofile(base / f"{part}_y.bin")
    write(base / "class_names.txt", "\n".join(f"class{i}" for i in range(10)) + "\n")
    return Fake(tmp, 10, remove="stl10_binary/test_y.bin", fewshot=False)


def fake_fashion(tmp: Path) -> Fake:
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 2)):
        labels = np.array([c for c in range(N) for _ in range(n)], dtype=np.uint8)
        images = np.repeat(np.array([colour(c)[0] for c in labels], dtype=np.uint8), 28 * 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.tobytes()
        )
    return Fake(
        tmp,
        10,
        remove="FashionMNIST/raw/t10k-labels-idx1-ubyte",
        channels=1,
        fewshot=False,
    )


VOC_STRATA = [0, 7, 14, 11, 2]  # aeroplane, cat, person, dog, bird: each item's first positive


def voc_xml(objects: list[tuple[str, bool]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{int(hard)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        f"<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for name, hard in objects
    )
    return f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>{body}</annotation>"


def fake_voc(tmp: Path) -> Fake:
    """Item ``k`` of stratum ``s``: its stratum class; odd ``k`` add a plain tvmonitor (19);
    ``k == 0`` adds a difficult train (18); ``k == 2`` a difficult and a plain tvmonitor."""
    base = tmp / "VOCdevkit" / "VOC2007"
    sets: dict[str, list[str]] = {"trainval": [], "test": []}
    for s, cls in enumerate(VOC_STRATA):
        for part, n in (("trainval", 6), ("test", 2)):
            for k in range(n):
                image_id = f"{len(sets['trainval']) + len(sets['test']):06d}"
                objects = [(VOC_CLASSES[cls], False)]
                if k % 2:
                    objects.append(("tvmonitor", False))
                if k == 0:
                    objects.append(("train", True))
                if k == 2:
                    objects += [("tvmonitor", True), ("tvmonitor", False)]
                save_image(base / "JPEGImages" / f"{image_id}.jpg", s)
                write(base / "Annotations" / f"{image_id}.xml", voc_xml(objects))
                sets[part].append(image_id)
    for part, ids in sets.items():
        write(base / "ImageSets" / "Main" / f"{part}.txt", "\n".join(ids) + "\n")
    return Fake(
        tmp,
        20,
        colour_of={cls: s for s, cls in enumerate(VOC_STRATA)},
        remove="VOCdevkit/VOC2007/Annotations",
        fewshot=False,
    )


def fake_cub(tmp: Path) -> Fake:
    base = tmp / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{c}" for c in range(N)]
    images, labels, split = [], [], []
    for i, (c, part, k) in enumerate(per_class_parts({"train": 6, "test": 2}), 1):
        rel = f"{names[c]}/Bird_{c}_{part}{k}.jpg"
        save_image(base / "images" / rel, c)
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c + 1}")
        split.append(f"{i} {int(part == 'train')}")
    write(base / "images.txt", "\n".join(images) + "\n")
    write(base / "image_class_labels.txt", "\n".join(labels) + "\n")
    write(base / "train_test_split.txt", "\n".join(split) + "\n")
    write(base / "classes.txt", "\n".join(f"{c + 1} {n}" for c, n in enumerate(names)) + "\n")
    return Fake(tmp, N, remove="CUB_200_2011/train_test_split.txt")


FAKES: dict[str, Callable[[Path], Fake]] = {
    "cifar10": lambda t: fake_cifar(t, hundred=False),
    "cifar100": lambda t: fake_cifar(t, hundred=True),
    "dtd": fake_dtd,
    "flowers102": fake_flowers,
    "pets": fake_pets,
    "cars": fake_cars,
    "aircraft": fake_aircraft,
    "food101": fake_food,
    "sun397": fake_sun,
    "caltech101": fake_caltech,
    "stl10": fake_stl,
    "fashionmnist": fake_fashion,
    "voc2007": fake_voc,
    "cub": fake_cub,
}


# ------------------------------------------------------------------- ImageFolder trees and tables

_CIFAR100_TEXT = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain
mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
"""
CIFAR100_FINE = _CIFAR100_TEXT.split()  # CIFAR-100's fine label names, in its own order


def tree_colour(c: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class, so a loaded image tells its class."""
    return ((37 * c) % 256, (91 * c + 40) % 256, (53 * c + 80) % 256)


def write_class_tree(
    root: Path, classes: list[str], per_class: int, offset: int = 0, size: int = 10
) -> None:
    """``root/<class>/<class>_NNN.png``, class ``c`` painted ``tree_colour(c + offset)``."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), tree_colour(c + offset)).save(
                root / name / f"{name}_{i:03d}.png"
            )


def class_names(n: int) -> list[str]:
    """``class00``, ``class01``, ...: sorted as numbered."""
    return [f"class{c:02d}" for c in range(n)]


def hf_table(classes: list[str], per_class: int, offset: int = 0) -> Any:
    """A ``datasets.Dataset`` with columns ``img`` and ``label`` (a ClassLabel of ``classes``)."""
    datasets = pytest.importorskip("datasets")
    images = [
        Image.new("RGB", (10, 10), tree_colour(c + offset))
        for c in range(len(classes))
        for _ in range(per_class)
    ]
    labels = [c for c in range(len(classes)) for _ in range(per_class)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)


def write_omniglot(root: Path, alphabets: dict[str, list[int]], per_char: int = 3) -> None:
    """torchvision's layout; a character is a 1-bit image with a black box at a place of its own."""
    k = 0
    for part, counts in alphabets.items():
        for a, n_chars in enumerate(counts):
            for ch in range(n_chars):
                folder = (
                    root
                    / "omniglot-py"
                    / part
                    / f"Alphabet{a}_{part[7:10]}"
                    / f"character{ch + 1:02d}"
                )
                folder.mkdir(parents=True)
                for i in range(per_char):
                    img = Image.new("1", (21, 21), 1)
                    img.paste(0, (k % 4 * 5, k // 4 % 4 * 5, k % 4 * 5 + 5, k // 4 % 4 * 5 + 5))
                    img.save(folder / f"{k:04d}_{i + 1:02d}.png")
                k += 1


def write_cifar100(root: Path, per_class: dict[str, int]) -> None:
    """CIFAR-100's python layout with ``per_class[part]`` images of each of its 100 classes."""
    base = root / "cifar-100-python"
    write_pickle(base / "meta", {"fine_label_names": CIFAR100_FINE, "coarse_label_names": []})
    for part, n in per_class.items():
        labels = [c for c in range(100) for _ in range(n)]
        write_pickle(base / part, cifar_batch(labels, "fine_labels", tree_colour))
