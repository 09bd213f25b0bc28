"""Local-root loaders (imagefolder:, hf:, omniglot, miniimagenet, cifarfs) on small generated roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bmssl.data import get_dataset, list_datasets
from bmssl.data.fewshot_sets import split_classes
from bmssl.errors import DataNotFoundError, UserError
from tests.fakes import (
    CIFAR100_FINE,
    class_names,
    hf_table,
    tree_colour,
    write_cifar100,
    write_class_tree,
    write_omniglot,
)

# ------------------------------------------------------------------------------------ imagefolder:


def test_registry_lists_local_sets() -> None:
    listed = list_datasets()
    for name in ("omniglot", "miniimagenet", "cifarfs", "imagefolder:<path>", "hf:<path>"):
        assert name in listed


def test_imagefolder_flat_fewshot_splits_are_class_disjoint(tmp_path: Path) -> None:
    write_class_tree(tmp_path, class_names(25), per_class=3)
    splits = {
        s: get_dataset(f"imagefolder:{tmp_path}", split=s, image_size=8)
        for s in ("train", "val", "test")
    }
    assert [len(splits[s].classes) for s in ("train", "val", "test")] == [16, 4, 5]
    seen = [set(d.classes) for d in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set().union(*seen) == set(class_names(25))
    test = splits["test"]
    assert len(test) == 15 and sorted(set(test.targets)) == list(range(5))
    image, label = test[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    expected = torch.tensor(tree_colour(int(test.classes[label][-2:])), dtype=torch.float32) / 255
    assert torch.allclose(image[:, 4, 4], expected, atol=1e-6)
    assert torch.equal(test.get_batch([0, 1]), torch.stack([test[0][0], test[1][0]]))


def test_imagefolder_flat_supervised_divides_images(tmp_path: Path) -> None:
    write_class_tree(tmp_path, class_names(4), per_class=10)
    splits = {
        s: get_dataset(f"imagefolder:{tmp_path}", split=s, protocol="supervised", image_size=8)
        for s in ("train", "val", "test")
    }
    assert [len(d) for d in splits.values()] == [28, 4, 8]
    for d in splits.values():
        assert d.classes == class_names(4)
    paths = [set(map(str, np.asarray(d.base.paths)[d.indices])) for d in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert len(set().union(*paths)) == 40


def test_imagefolder_split_tree_disjoint_classes_used_as_given(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "train", class_names(6)[:3], per_class=2)
    write_class_tree(tmp_path / "validation", class_names(6)[3:4], per_class=2)
    write_class_tree(tmp_path / "test", class_names(6)[4:], per_class=2)
    get = lambda s: get_dataset(f"imagefolder:{tmp_path}", split=s, image_size=8)  # noqa: E731
    assert get("train").classes == class_names(6)[:3]
    assert get("val").classes == class_names(6)[3:4]
    assert get("test").classes == class_names(6)[4:]


def test_imagefolder_split_tree_shared_classes(tmp_path: Path) -> None:
    """Supervised: folders as given, val carved from train; few-shot: refused, not re-split."""
    write_class_tree(tmp_path / "train", class_names(10), per_class=10)
    write_class_tree(tmp_path / "test", class_names(10), per_class=2)
    sup = {
        s: get_dataset(f"imagefolder:{tmp_path}", split=s, protocol="supervised", image_size=8)
        for s in ("train", "val", "test")
    }
    assert [len(d) for d in sup.values()] == [90, 10, 20]
    assert all(d.classes == class_names(10) for d in sup.values())
    assert all(
        "/test/" not in str(d.base.paths[i]) for d in (sup["train"], sup["val"]) for i in d.indices
    )


def test_imagefolder_split_folders_sharing_classes_refuse_the_fewshot_protocol(
    tmp_path: Path,
) -> None:
    """8 classes in train/ val/ test/ each were once pooled and re-split 5/1/2: now an error."""
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        write_class_tree(tmp_path / split, class_names(8), per_class=n, size=4)
    for split in ("train", "val", "test"):
        with pytest.raises(UserError) as err:
            get_dataset(f"imagefolder:{tmp_path}", split=split, image_size=4)
        message = str(err.value)
        assert "share 8 classes" in message and "class-disjoint" in message
        assert "class-disjoint" in message and "<class>/<image>" in message
    sup = get_dataset(f"imagefolder:{tmp_path}", split="val", protocol="supervised", image_size=4)
    assert len(sup) == 8 and sup.classes == class_names(8)


def test_imagefolder_missing_val_folder_carves_classes(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "train", class_names(12)[:10], per_class=2)
    write_class_tree(tmp_path / "test", class_names(12)[10:], per_class=2)
    train = get_dataset(f"imagefolder:{tmp_path}", split="train", image_size=8)
    val = get_dataset(f"imagefolder:{tmp_path}", split="val", image_size=8)
    assert train.classes == class_names(12)[:8] and val.classes == class_names(12)[8:10]


def test_imagefolder_preload_matches_lazy(tmp_path: Path) -> None:
    write_class_tree(tmp_path, class_names(5), per_class=4, size=13)
    lazy = get_dataset(f"imagefolder:{tmp_path}", split="test", image_size=9)
    held = get_dataset(f"imagefolder:{tmp_path}", split="test", image_size=9, preload=True)
    assert held.targets == lazy.targets and held.classes == lazy.classes
    assert torch.equal(held.get_batch(range(len(held))), lazy.get_batch(range(len(lazy))))


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="not found at"):
        get_dataset(f"imagefolder:{tmp_path / 'absent'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images found"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}")
    write_class_tree(tmp_path / "tv" / "train", class_names(2), per_class=4)
    write_class_tree(tmp_path / "tv" / "val", class_names(2), per_class=1)
    with pytest.raises(UserError, match="no 'test' split"):
        get_dataset(f"imagefolder:{tmp_path / 'tv'}", split="test", protocol="supervised")


# ------------------------------------------------------------------------------------------- hf:


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    hf_table(class_names(25), per_class=2).save_to_disk(str(tmp_path / "ds"))
    test = get_dataset(f"hf:{tmp_path / 'ds'}", split="test", image_size=8)
    assert test.classes == class_names(25)[20:] and len(test) == 10
    image, label = test[3]
    assert image.shape == (3, 8, 8)
    expected = torch.tensor(tree_colour(20 + label), dtype=torch.float32) / 255
    assert torch.allclose(image[:, 4, 4], expected, atol=1e-6)
    one = get_dataset(f"hf:{tmp_path / 'ds'}", split="test", image_size=8, channels=1, preload=True)
    assert one.image_shape == (1, 8, 8) and one.targets == test.targets


def test_hf_dataset_dict_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    classes = class_names(4)
    dd = datasets.DatasetDict(
        {
            "train": hf_table(classes, 5),
            "validation": hf_table(classes, 1),
            "test": hf_table(classes, 2),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    sup = {
        s: get_dataset(f"hf:{tmp_path / 'dd'}", split=s, protocol="supervised", image_size=8)
        for s in ("train", "val", "test")
    }
    assert [len(d) for d in sup.values()] == [20, 4, 8]
    assert all(d.classes == classes for d in sup.values())


def test_hf_errors(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataNotFoundError, match="no saved Hugging Face dataset"):
        get_dataset(f"hf:{tmp_path / 'plain'}")
    with pytest.raises(DataNotFoundError, match="not found at"):
        get_dataset(f"hf:{tmp_path / 'absent'}")


# ------------------------------------------------------------------------------------- omniglot


def test_omniglot_layout_order_and_split(tmp_path: Path) -> None:
    write_omniglot(tmp_path, {"images_background": [3, 2], "images_evaluation": [4]})
    kw = {"image_size": 7, "split_sizes": (5, 1, 3)}
    train = get_dataset("omniglot", root=tmp_path, split="train", **kw)
    val = get_dataset("omniglot", root=tmp_path, split="val", **kw)
    test = get_dataset("omniglot", root=tmp_path / "omniglot-py", split="test", **kw)
    assert len(train.classes) == 5 and len(val.classes) == 1 and len(test.classes) == 3
    assert train.classes[0] == "Alphabet0_bac/character01" and val.classes == [
        "Alphabet0_eva/character01"
    ]
    assert len(test) == 9 and train.image_shape == (1, 7, 7)
    first = train.get_batch([0])[
        0, 0
    ]  # character 0: box at the top-left corner, inverted -> bright
    assert first[0, 0] > 0.9 and first[-1, -1] < 0.1
    raw = get_dataset("omniglot", root=tmp_path, split="train", invert=False, **kw).get_batch([0])[
        0, 0
    ]
    assert torch.allclose(raw, 1 - first, atol=1e-6)
    sup = get_dataset("omniglot", root=tmp_path, split="train", protocol="supervised", **kw)
    assert len(sup.classes) == 9 and len(sup) == 9 * 2


def test_omniglot_incomplete_root(tmp_path: Path) -> None:
    write_omniglot(tmp_path, {"images_background": [2]})
    with pytest.raises(DataNotFoundError, match="images_evaluation") as err:
        get_dataset("omniglot", root=tmp_path)
    assert "python -m bmssl.data fetch omniglot ROOT" in str(err.value)
    write_omniglot(tmp_path / "b", {"images_background": [2], "images_evaluation": [2]})
    with pytest.raises(DataNotFoundError, match="has 4 characters but its split needs 1623"):
        get_dataset("omniglot", root=tmp_path / "b")
    with pytest.raises(DataNotFoundError, match="needs a local root"):
        get_dataset("omniglot")


# --------------------------------------------------------------------------------- miniimagenet


def all_wnids() -> list[str]:
    return [w for s in ("train", "val", "test") for w in split_classes("miniimagenet", s)]


def test_miniimagenet_split_lists() -> None:
    sizes = [len(split_classes("miniimagenet", s)) for s in ("train", "val", "test")]
    assert sizes == [64, 16, 20] and len(set(all_wnids())) == 100
    assert all(w.startswith("n") and len(w) == 9 for w in all_wnids())
    assert "n01930112" in split_classes("miniimagenet", "test")  # nematode, a well-known test class


@pytest.mark.parametrize("layout", ["flat", "split_folders", "csv"])
def test_miniimagenet_layouts(tmp_path: Path, layout: str) -> None:
    wnids = all_wnids()
    if layout == "flat":
        write_class_tree(tmp_path, wnids, per_class=2, size=6)
    elif layout == "split_folders":
        for s, lo, hi in (("train", 0, 64), ("val", 64, 80), ("test", 80, 100)):
            write_class_tree(tmp_path / s, wnids[lo:hi], per_class=2, offset=lo, size=6)
    else:
        (tmp_path / "images").mkdir()
        for s, lo, hi in (("train", 0, 64), ("val", 64, 80), ("test", 80, 100)):
            rows = ["filename,label"]
            for c in range(lo, hi):
                for i in range(2):
                    name = f"{wnids[c]}{i:08d}.jpg"
                    Image.new("RGB", (6, 6), tree_colour(c)).save(
                        tmp_path / "images" / name, quality=100
                    )
                    rows.append(f"{name},{wnids[c]}")
            (tmp_path / f"{s}.csv").write_text("\n".join(rows) + "\n")
    for s in ("train", "val", "test"):
        ds = get_dataset("miniimagenet", root=tmp_path, split=s, image_size=6)
        assert ds.classes == split_classes("miniimagenet", s)
        assert len(ds) == 2 * len(ds.classes) and ds.image_shape == (3, 6, 6)
    test = get_dataset("miniimagenet", root=tmp_path, split="test", image_size=6)
    image, label = test[5]
    expected = torch.tensor(tree_colour(80 + label), dtype=torch.float32) / 255
    assert torch.allclose(image[:, 3, 3], expected, atol=3 / 255)
    sup = get_dataset(
        "miniimagenet", root=tmp_path, split="train", protocol="supervised", image_size=6
    )
    assert sup.classes == wnids and len(sup) == 100 * round(0.7 * 2)


def test_miniimagenet_from_saved_hf(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    wnids = all_wnids()
    shuffled = sorted(wnids)  # the dataset's own class order differs from the split files'
    table = hf_table(shuffled, per_class=1)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "mini"))
    val = get_dataset("miniimagenet", root=tmp_path / "mini", split="val", image_size=6)
    assert val.classes == split_classes("miniimagenet", "val") and len(val) == 32
    image, label = val[0]
    expected = (
        torch.tensor(tree_colour(shuffled.index(val.classes[label])), dtype=torch.float32) / 255
    )
    assert torch.allclose(image[:, 3, 3], expected, atol=1e-6)


def test_miniimagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="'miniimagenet' not found at") as err:
        get_dataset("miniimagenet", root=tmp_path / "nowhere")
    assert "save_to_disk" in str(err.value)
    write_class_tree(tmp_path / "part", all_wnids()[:70], per_class=1, size=4)
    assert len(get_dataset("miniimagenet", root=tmp_path / "part", split="train").classes) == 64
    with pytest.raises(DataNotFoundError, match="lacks 10 of the 16 classes"):
        get_dataset("miniimagenet", root=tmp_path / "part", split="val")


# ------------------------------------------------------------------------------------- cifarfs


def test_cifarfs_split_lists_cover_cifar100() -> None:
    lists = [split_classes("cifarfs", s) for s in ("train", "val", "test")]
    assert [len(x) for x in lists] == [64, 16, 20]
    assert sorted(sum(lists, [])) == sorted(CIFAR100_FINE)


def test_cifarfs_pools_train_and_test(tmp_path: Path) -> None:
    write_cifar100(tmp_path, {"train": 2, "test": 1})
    test = get_dataset("cifarfs", root=tmp_path, split="test")
    assert test.classes == split_classes("cifarfs", "test") and len(test) == 20 * 3
    images = test.get_batch(range(len(test)))
    assert images.shape == (60, 3, 32, 32)
    for i in (0, 7, 59):
        c = CIFAR100_FINE.index(test.classes[test.targets[i]])
        assert torch.allclose(
            images[i, :, 5, 5], torch.tensor(tree_colour(c), dtype=torch.float32) / 255
        )
    small = get_dataset("cifarfs", root=tmp_path / "cifar-100-python", split="val", image_size=16)
    assert small.image_shape == (3, 16, 16) and len(small) == 16 * 3


def test_cifarfs_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"cifar-100-python/meta") as err:
        get_dataset("cifarfs", root=tmp_path)
    assert "CIFAR100(ROOT, download=True)" in str(err.value)


# ---------------------------------------------------------------------------- unlabeled protocol


def test_imagefolder_unlabeled_pools_every_class_and_split_folder(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "train", class_names(6)[:3], per_class=2, size=4)
    write_class_tree(tmp_path / "val", class_names(6)[3:4], per_class=2, offset=3, size=4)
    write_class_tree(tmp_path / "test", class_names(6)[4:], per_class=2, offset=4, size=4)
    pool = get_dataset(f"imagefolder:{tmp_path}", split="train", protocol="unlabeled", image_size=4)
    assert len(pool) == 12 and pool.classes == class_names(6)
    assert len(get_dataset(f"imagefolder:{tmp_path}", split="train", image_size=4)) == 6
    with pytest.raises(UserError, match="split='train'"):
        get_dataset(f"imagefolder:{tmp_path}", split="val", protocol="unlabeled")


def test_imagefolder_unlabeled_uses_every_class_folder(class_tree: Path) -> None:
    pool = get_dataset(f"imagefolder:{class_tree}", protocol="unlabeled", image_size=4)
    assert len(pool) == 12 and pool.classes == class_names(4)
    assert len(get_dataset(f"imagefolder:{class_tree}", protocol="fewshot", image_size=4)) < 12


def test_imagefolder_unlabeled_accepts_a_flat_folder_of_images(tmp_path: Path) -> None:
    for k in range(5):
        Image.new("RGB", (6, 6), tree_colour(k)).save(tmp_path / f"img{k}.png")
    pool = get_dataset(f"imagefolder:{tmp_path}", protocol="unlabeled", image_size=6)
    assert len(pool) == 5 and pool.classes == ["unlabeled"] and pool.targets == [0] * 5
    expected = torch.tensor(tree_colour(3), dtype=torch.float32) / 255
    assert torch.allclose(pool[3][0][:, 2, 2], expected, atol=1e-6)
    with pytest.raises(UserError, match="holds 5 images but no <class>/ folders.*'unlabeled'"):
        get_dataset(f"imagefolder:{tmp_path}", protocol="supervised")


def test_hf_unlabeled_pools_every_member_labels_optional(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (6, 6), tree_colour(k)) for k in range(3)]
    bare = datasets.Dataset.from_dict(
        {"image": images}, datasets.Features({"image": datasets.Image()})
    )
    datasets.DatasetDict(
        {
            "train": hf_table(class_names(2), 2),
            "test": hf_table(class_names(2), 1),
            "unlabeled": bare,
        }
    ).save_to_disk(str(tmp_path / "dd"))
    pool = get_dataset(f"hf:{tmp_path / 'dd'}", protocol="unlabeled", image_size=6)
    assert len(pool) == 4 + 2 + 3 and pool.classes == class_names(2) + ["unlabeled"]
    assert pool.targets[-3:] == [2, 2, 2]
    bare.save_to_disk(str(tmp_path / "bare"))
    assert len(get_dataset(f"hf:{tmp_path / 'bare'}", protocol="unlabeled", image_size=6)) == 3
    with pytest.raises(UserError, match="no label column"):
        get_dataset(f"hf:{tmp_path / 'bare'}", protocol="supervised")


def test_fewshot_benchmarks_unlabeled_pool_every_image(tmp_path: Path) -> None:
    write_omniglot(tmp_path / "o", {"images_background": [2], "images_evaluation": [1]}, per_char=2)
    pool = get_dataset("omniglot", root=tmp_path / "o", protocol="unlabeled", image_size=7)
    assert len(pool) == 6 and pool.num_classes == 3
    write_cifar100(tmp_path / "c", {"train": 1, "test": 1})
    assert len(get_dataset("cifarfs", root=tmp_path / "c", protocol="unlabeled")) == 200
