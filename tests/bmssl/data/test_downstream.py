"""BiSSL downstream loaders (bmssl.data.downstream) on tiny fake roots in each set's on-disk format.

Every fake image of class ``c`` is filled with ``colour(c)``, so a loaded item's pixels tell which
class the fake root gave it: the tests check that images and labels stay paired through each
loader, not only that labels are in range.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from bmssl.data import get_dataset, list_datasets
from bmssl.data.base import SubsetByClass
from bmssl.data.downstream import HOW_TO_GET, VOC_CLASSES
from bmssl.errors import DataNotFoundError, UserError

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


def fake_cifar(tmp: Path, hundred: bool) -> Fake:
    base = tmp / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"

    def dump(name: str, labels: list[int]) -> None:
        pixels = np.array([colour(c) for c in labels], dtype=np.uint8)[:, :, None]
        data = np.repeat(pixels, 32 * 32, axis=2).reshape(len(labels), -1)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)

    train = [c for c in range(N) for _ in range(6)]
    test = [c for c in range(N) for _ in range(2)]
    if hundred:
        dump("train", train)
        dump("test", test)
        with open(base / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)]}, f)
        return Fake(tmp, 100, remove="cifar-100-python/meta")
    for i in range(5):
        dump(f"data_batch_{i + 1}", train[i::5])
    dump("test_batch", test)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"name{i}" for i in range(10)]}, f)
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


# --------------------------------------------------------------------------------------- helpers


def item_ids(ds: Any) -> list[str]:
    """Something naming each item of ``ds`` in its source (file path or source index)."""
    if isinstance(ds, SubsetByClass):
        paths = getattr(ds.base, "paths", None)
        return [str(paths[i]) if paths is not None else str(int(i)) for i in ds.indices]
    return [str(p) for p in ds.paths]


def load(name: str, fake: Fake, split: str, protocol: str = "supervised", **extra: Any) -> Any:
    options = {**fake.options, **extra}
    return get_dataset(name, fake.root, split, protocol, image_size=SIZE, **options)


def check_items(ds: Any, fake: Fake) -> None:
    """Shape, range and label of every item; the pixels say the fake's class of each."""
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch.shape == (len(ds), fake.channels, SIZE, SIZE) and batch.dtype == torch.float32
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    red = batch[:, 0, SIZE // 2 :, :].mean(dim=(1, 2)).numpy() * 255  # lower half: no STL marker
    for i, target in enumerate(ds.targets):
        expected = colour(fake.colour_of[target])[0]
        assert abs(red[i] - expected) < 8, (i, target, red[i])
    image, label = ds[0]
    assert torch.allclose(image, batch[0], atol=1e-6)
    if getattr(ds, "multilabel", False):
        assert label.dtype == torch.float32 and label.shape == (fake.num_classes,)
        assert int(label.argmax()) == ds.targets[0]
    else:
        assert isinstance(label, int) and label == ds.targets[0]


# ----------------------------------------------------------------------------------------- tests


def test_every_set_registered_with_help() -> None:
    names = set(list_datasets())
    for name in FAKES:
        assert name in names
        assert "ROOT" in HOW_TO_GET[name]


@pytest.mark.parametrize("name", sorted(FAKES))
def test_supervised_splits(name: str, tmp_path: Path) -> None:
    fake = FAKES[name](tmp_path)
    splits = {s: load(name, fake, s) for s in ("train", "val", "test")}
    ids = {s: item_ids(ds) for s, ds in splits.items()}
    for split, ds in splits.items():
        assert len(ds) == fake.sizes[split], split
        assert ds.num_classes == fake.num_classes
        assert sorted(set(ds.targets)) == sorted(fake.colour_of), split  # every class everywhere
        assert ds.image_shape == (fake.channels, SIZE, SIZE)
        assert len(set(ids[split])) == len(ds)
        check_items(ds, fake)
    assert not set(ids["train"]) & set(ids["val"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    again = {s: load(name, fake, s) for s in ("train", "val")}  # deterministic
    for split, ds in again.items():
        assert item_ids(ds) == ids[split] and ds.targets == splits[split].targets


@pytest.mark.parametrize("name", sorted(FAKES))
def test_fewshot_protocol(name: str, tmp_path: Path) -> None:
    fake = FAKES[name](tmp_path)
    if not fake.fewshot:
        with pytest.raises(UserError, match="supervised-only"):
            load(name, fake, "train", "fewshot")
        return
    splits = {s: load(name, fake, s, "fewshot") for s in ("train", "val", "test")}
    classes = [set(ds.classes) for ds in splits.values()]
    assert not (classes[0] & classes[1] or classes[0] & classes[2] or classes[1] & classes[2])
    assert set().union(*classes) == set(load(name, fake, "test").classes)
    # The pool is every image of the set (official parts ignored), split by class only.
    assert sum(len(ds) for ds in splits.values()) == sum(fake.sizes.values())


@pytest.mark.parametrize("name", sorted(FAKES))
def test_missing_root(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="needs a local root"):
        get_dataset(name, None, "train", "supervised")
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        get_dataset(name, nowhere, "train", "supervised")
    message = str(err.value)
    assert repr(name) in message and str(nowhere) in message and HOW_TO_GET[name] in message


@pytest.mark.parametrize("name", sorted(FAKES))
def test_incomplete_root_names_missing_part(name: str, tmp_path: Path) -> None:
    fake = FAKES[name](tmp_path)
    gone = fake.root / fake.remove
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    with pytest.raises(DataNotFoundError) as err:
        load(name, fake, "test")
    message = str(err.value)
    assert repr(name) in message and str(gone) in message
    assert ("download=True" in message) or ("ROOT/" in message)


def test_root_may_be_the_extracted_folder(tmp_path: Path) -> None:
    fake_dtd(tmp_path)  # ROOT/dtd/dtd/...: ROOT and ROOT/dtd are both accepted as root
    for root in (tmp_path / "dtd", tmp_path):
        assert len(get_dataset("dtd", root, "val", "supervised", image_size=SIZE)) == 2 * N
    with pytest.raises(DataNotFoundError, match="not found at"):
        get_dataset("dtd", tmp_path / "dtd" / "dtd", "val", "supervised")


def test_voc_multi_hot_and_difficult(tmp_path: Path) -> None:
    fake = fake_voc(tmp_path)
    test = load("voc2007", fake, "test")
    assert test.multilabel and test.label_matrix.shape == (len(test), 20)
    assert set(np.unique(test.label_matrix)) <= {0.0, 1.0}
    tv, train, hard = VOC_CLASSES.index("tvmonitor"), VOC_CLASSES.index("train"), 0
    for i in range(len(test)):
        k = i % 2  # test items are k = 0, 1 of each stratum
        row = test.label_matrix[i]
        assert row[VOC_STRATA[i // 2]] == 1.0 and test.targets[i] == VOC_STRATA[i // 2]
        assert row[tv] == float(k == 1)
        assert row[train] == float(k == 0)  # a difficult object counts by default ...
        assert test.difficult_matrix[i, train] == (k == 0)
        assert row.sum() == 1 + (k == 1) + (k == 0)
        assert torch.equal(test[i][1], torch.from_numpy(row))
        hard += int(test.difficult_matrix[i].sum())
    assert hard == N
    ignored = load("voc2007", fake, "test", difficult="ignore")
    assert ignored.label_matrix[:, train].sum() == 0  # ... and not when ignored
    assert np.array_equal(ignored.difficult_matrix, test.difficult_matrix)
    # A class with a plain and a difficult instance is positive, not difficult-only (k == 2).
    train_split = load("voc2007", fake, "train", difficult="ignore")
    k2 = [i for i, p in enumerate(train_split.paths) if "tvmonitor" in voc_of(p)]
    assert all(train_split.label_matrix[i, tv] == 1.0 for i in k2)
    assert not train_split.difficult_matrix[:, tv].any()
    assert not load("cifar10", fake_cifar(tmp_path / "c", False), "test").multilabel
    with pytest.raises(UserError, match="difficult"):
        load("voc2007", fake, "test", difficult="maybe")


def voc_of(image: Path) -> str:
    return (image.parents[1] / "Annotations" / f"{image.stem}.xml").read_text()


def test_sun397_without_partitions_halves_each_class(tmp_path: Path) -> None:
    fake = fake_sun(tmp_path, partitions=False, per_class=12)
    sizes = {s: len(load("sun397", fake, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 5 * N, "val": 1 * N, "test": 6 * N}
    assert sorted(set(load("sun397", fake, "test").targets)) == list(range(N))
    with pytest.raises(UserError, match="partition"):
        load("sun397", fake, "test", partition=11)


def test_options_seed_fraction_and_partition(tmp_path: Path) -> None:
    fake = fake_food(tmp_path)
    a = item_ids(load("food101", fake, "val"))
    b = item_ids(load("food101", fake, "val", seed=1))
    assert a != b and len(a) == len(b)
    assert len(load("food101", fake, "val", val_fraction=0.5)) == 3 * N
    with pytest.raises(UserError, match="val_fraction"):
        load("food101", fake, "val", val_fraction=1.0)
    dtd = fake_dtd(tmp_path / "d")
    with pytest.raises(DataNotFoundError, match="train2.txt"):
        load("dtd", dtd, "train", partition=2)
    caltech = fake_caltech(tmp_path / "c")
    assert len(load("caltech101", caltech, "test", train_per_class=2)) == 6 * N
    with pytest.raises(UserError, match="annotation_level"):
        load("aircraft", fake_aircraft(tmp_path / "a"), "train", annotation_level="model")


def test_native_size_keeps_pixels_and_fashion_channels(tmp_path: Path) -> None:
    stl = fake_stl(tmp_path / "s")
    image, label = get_dataset("stl10", stl.root, "test", "supervised")[0]  # 96x96 by default
    assert image.shape == (3, 96, 96)
    assert torch.equal(image, torch.from_numpy(stl_image(label)).float() / 255)
    cifar = fake_cifar(tmp_path / "c", hundred=True)
    image, label = get_dataset("cifar100", cifar.root, "test", "supervised")[0]
    assert image.shape == (3, 32, 32) and torch.allclose(
        image[:, 0, 0] * 255, torch.tensor(colour(label), dtype=torch.float32)
    )
    fashion = fake_fashion(tmp_path / "f")
    grey = load("fashionmnist", fashion, "test")
    rgb = load("fashionmnist", fashion, "test", channels=3)
    assert rgb.image_shape == (3, SIZE, SIZE) and rgb[0][0].shape == (3, SIZE, SIZE)
    assert torch.equal(rgb[0][0], grey[0][0].expand(3, -1, -1))
    with pytest.raises(UserError, match="channels"):
        load("fashionmnist", fashion, "test", channels=2)


def test_preload_matches_lazy(tmp_path: Path) -> None:
    fake = fake_pets(tmp_path)
    lazy = load("pets", fake, "test")
    held = load("pets", fake, "test", preload=True)
    assert held.targets == lazy.targets
    assert torch.allclose(
        held.get_batch(np.arange(len(held))), lazy.get_batch(range(len(lazy))), atol=1 / 255
    )


def test_cub_imagefolder_and_hf_layouts(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for c in range(N):
        for part, n in (("train", 6), ("test", 2)):
            for k in range(n):
                save_image(tree / part / f"bird{c}" / f"{k}.jpg", c)
    fake = Fake(tree, N)
    splits = {s: load("cub", fake, s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == SUPERVISED_SIZES
    for ds in splits.values():
        check_items(ds, fake)
    assert not set(item_ids(splits["train"])) & set(item_ids(splits["val"]))

    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"b{c}" for c in range(N)])}
    )
    members = {}
    for part, n in (("train", 6), ("test", 2)):
        labels = [c for c in range(N) for _ in range(n)]
        images = [Image.new("RGB", (10, 8), colour(c)) for c in labels]
        members[part] = datasets.Dataset.from_dict({"image": images, "label": labels}, features)
    datasets.DatasetDict(members).save_to_disk(str(tmp_path / "hf"))
    fake = Fake(tmp_path / "hf", N)
    for split, size in SUPERVISED_SIZES.items():
        ds = load("cub", fake, split)
        assert len(ds) == size
        check_items(ds, fake)
    with pytest.raises(DataNotFoundError, match="no layout"):
        get_dataset("cub", tmp_path / "tree" / "train" / "bird0", "train", "supervised")


def test_file_listing_reads_each_torchvision_layout_and_names_a_renamed_one() -> None:
    from types import SimpleNamespace

    from bmssl.data.downstream import _file_listing

    files = [Path("a.jpg"), Path("b.jpg")]
    assert _file_listing("x", SimpleNamespace(_image_files=files, _labels=[1, 0])) == (
        files,
        [1, 0],
    )
    assert _file_listing("x", SimpleNamespace(_images=files, _labels=[0, 0])) == (files, [0, 0])
    assert _file_listing("x", SimpleNamespace(_samples=[("a.jpg", 2), ("b.jpg", 3)])) == (
        files, [2, 3],
    )  # fmt: skip
    with pytest.raises(UserError, match="dataset 'dtd': torchvision .* install torchvision"):
        _file_listing("dtd", SimpleNamespace(files=files, labels=[0, 1]))


def test_downstream_evaluate_leaves_voc_difficult_pairs_out_of_the_map(tmp_path: Path) -> None:
    """bissl's evaluate finds the loaded VOC split's difficult mask by itself."""
    from bissl.downstream import evaluate
    from bissl.metrics import classification_metrics

    test = load("voc2007", fake_voc(tmp_path), "test")
    scores = torch.randn(len(test), 20, generator=torch.Generator().manual_seed(0))

    class FixedScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.row = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = scores[self.row : self.row + len(x)]
            self.row += len(x)
            return out

    labels = torch.from_numpy(test.label_matrix)
    got = evaluate(FixedScores(), test, batch_size=4)
    assert got == classification_metrics(scores, labels, test.difficult_matrix)
    assert got["map11"] != classification_metrics(scores, labels)["map11"]
