"""BiSSL downstream loaders (bmssl.data.downstream) on tiny fake roots in each set's on-disk format
(built by :mod:`tests.fakes`).

Every fake image of class ``c`` is filled with ``colour(c)``, so a loaded item's pixels tell which
class the fake root gave it: the tests check that images and labels stay paired through each
loader, not only that labels are in range.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bmssl.data import get_dataset, list_datasets
from bmssl.data.base import SubsetByClass
from bmssl.data.downstream import HOW_TO_GET, VOC_CLASSES
from bmssl.errors import DataNotFoundError, UserError
from tests.fakes import (
    FAKES,
    SIZE,
    SUPERVISED_SIZES,
    VOC_STRATA,
    Fake,
    N,
    colour,
    fake_aircraft,
    fake_caltech,
    fake_cifar,
    fake_dtd,
    fake_fashion,
    fake_food,
    fake_pets,
    fake_stl,
    fake_sun,
    fake_voc,
    save_image,
    stl_image,
)

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

    from bmssl.data.downstream._common import file_listing as _file_listing

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
    from bissl.finetune import evaluate
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


@pytest.mark.parametrize("name", sorted(FAKES))
def test_unlabeled_protocol_pools_every_listed_image(name: str, tmp_path: Path) -> None:
    fake = FAKES[name](tmp_path)
    pool = load(name, fake, "train", "unlabeled")
    assert len(pool) == sum(fake.sizes.values()) and pool.num_classes == fake.num_classes
    assert len(set(item_ids(pool))) == len(pool)


@pytest.mark.parametrize("name", sorted(FAKES))
def test_labels_match_items_without_decoding(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FAKES[name](tmp_path)
    ds = load(name, fake, "val")
    first = ds[0][1]

    def no_decoding(*_: Any, **__: Any) -> None:
        raise AssertionError("labels() decoded an image")

    monkeypatch.setattr(Image, "open", no_decoding)
    labels = ds.labels()
    if ds.multilabel:
        assert labels.dtype == torch.float32 and labels.shape == (len(ds), fake.num_classes)
        assert torch.equal(labels, torch.from_numpy(ds.label_matrix)) and torch.equal(
            labels[0], first
        )
    else:
        assert labels.dtype == torch.long and labels.tolist() == ds.targets
        assert int(labels[0]) == first


def test_voc_matrices_survive_subsets_and_preloading(tmp_path: Path) -> None:
    fake = fake_voc(tmp_path)
    test = load("voc2007", fake, "test")
    mask = np.arange(len(test)) % 2 == 0
    sub = SubsetByClass(test, list(range(20)), item_mask=mask)
    assert sub.multilabel and np.array_equal(sub.difficult_matrix, test.difficult_matrix[mask])
    assert torch.equal(sub.labels(), test.labels()[torch.from_numpy(mask)])
    assert torch.equal(sub[1][1], test[2][1])
    held = load("voc2007", fake, "test", preload=True)
    assert held.multilabel and held.in_memory
    assert np.array_equal(held.difficult_matrix, test.difficult_matrix)
    assert torch.equal(held.labels(), test.labels()) and torch.equal(held[3][1], test[3][1])
    assert load("cifar10", fake_cifar(tmp_path / "c", False), "test").difficult_matrix is None
