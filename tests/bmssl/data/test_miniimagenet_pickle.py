"""miniImageNet from learn2learn's pickle cache, read without running code from the files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bmssl.data import get_dataset
from bmssl.data.fewshot_sets import L2L_CACHE, split_classes
from bmssl.data.safe_pickle import UnsafePickleError, load_data_pickle
from bmssl.errors import DataNotFoundError, UserError, cli_entry

SPLITS = ("train", "val", "test")
PER_CLASS = 2
SIZE = 84


def l2l_content(split: str, seed: int, size: int = SIZE) -> dict[str, Any]:
    """One cache file's dict in learn2learn's format: ``image_data`` uint8 [N, size, size, 3]
    and ``class_dict`` wnid -> row indices. Rows of a class are interleaved with other classes'
    and the dict is in another order than the split file, so nothing may assume either."""
    rng = np.random.default_rng(seed)
    wnids = split_classes("miniimagenet", split)
    n = len(wnids) * PER_CLASS
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    rows = rng.permutation(n).reshape(len(wnids), PER_CLASS)
    order = rng.permutation(len(wnids))
    class_dict = {wnids[c]: sorted(rows[c].tolist()) for c in order}
    return {"image_data": images, "class_dict": class_dict}


def write_cache(root: Path, protocol: int = 4, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i, split in enumerate(SPLITS):
        contents[split] = l2l_content(split, seed=i)
        if split not in skip:
            with open(root / L2L_CACHE[split], "wb") as f:
                pickle.dump(contents[split], f, protocol=protocol)
    return contents


def expected_rows(content: dict[str, Any], wnid: str) -> np.ndarray:
    """Images of one class in row order, channels first, as floats in [0, 1]."""
    rows = sorted(content["class_dict"][wnid])
    return content["image_data"][rows].transpose(0, 3, 1, 2).astype(np.float32) / 255


def by_class(dataset: Any) -> dict[str, torch.Tensor]:
    """Every item's image grouped by class name, in the dataset's order."""
    images = dataset.get_batch(np.arange(len(dataset)))
    targets = np.asarray(dataset.targets)
    return {name: images[targets == c] for c, name in enumerate(dataset.classes)}


def pixels(images: torch.Tensor) -> torch.Tensor:
    return images.mul(255).round().to(torch.uint8)


def test_cache_file_names_are_learn2learns() -> None:
    # learn2learn's MiniImagenet(root, mode) opens root/mini-imagenet-cache-<mode>.pkl
    modes = dict(zip(SPLITS, ("train", "validation", "test")))
    expected = {split: f"mini-imagenet-cache-{mode}.pkl" for split, mode in modes.items()}
    assert expected == L2L_CACHE


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_splits_classes_and_pixels(tmp_path: Path, protocol: int) -> None:
    contents = write_cache(tmp_path, protocol=protocol)
    for split in SPLITS:
        ds = get_dataset("miniimagenet", root=tmp_path, split=split, image_size=SIZE)
        assert ds.classes == split_classes("miniimagenet", split)
        assert [len(split_classes("miniimagenet", s)) for s in SPLITS] == [64, 16, 20]
        assert len(ds) == PER_CLASS * len(ds.classes) and ds.image_shape == (3, SIZE, SIZE)
        assert ds.in_memory
        for wnid, images in by_class(ds).items():
            assert torch.equal(images, torch.from_numpy(expected_rows(contents[split], wnid)))
        image, label = ds[3]
        assert torch.equal(image, by_class(ds)[ds.classes[label]][ds.targets[:3].count(label)])


@pytest.mark.parametrize("image_size", [SIZE, 32])
def test_pickles_match_the_same_images_as_a_folder_tree(tmp_path: Path, image_size: int) -> None:
    contents = write_cache(tmp_path / "pickles")
    for content in contents.values():
        for wnid, rows in content["class_dict"].items():
            folder = tmp_path / "tree" / wnid
            folder.mkdir(parents=True)
            for row in rows:  # named by row, so the folder's order is the pickle's row order
                Image.fromarray(content["image_data"][row]).save(folder / f"{row:05d}.png")
    for split in SPLITS:
        pickled = get_dataset(
            "miniimagenet", root=tmp_path / "pickles", split=split, image_size=image_size
        )
        tree = get_dataset(
            "miniimagenet", root=tmp_path / "tree", split=split, image_size=image_size
        )
        assert pickled.classes == tree.classes
        assert sorted(pickled.targets) == sorted(tree.targets)  # item order may differ
        assert pickled.image_shape == tree.image_shape == (3, image_size, image_size)
        # Same resize as a decoded file, so the same 8-bit pixels, not merely close ones (the
        # float images differ by float32 rounding: x / 255 in memory, x * (1 / 255) from PIL).
        for wnid, images in by_class(pickled).items():
            assert torch.equal(pixels(images), pixels(by_class(tree)[wnid]))


def test_pooled_protocols_read_all_three_files(tmp_path: Path) -> None:
    contents = write_cache(tmp_path)
    every = [w for s in SPLITS for w in split_classes("miniimagenet", s)]
    pool = get_dataset("miniimagenet", root=tmp_path, protocol="unlabeled", image_size=SIZE)
    assert len(pool) == 100 * PER_CLASS and sorted(pool.classes) == sorted(every)
    test_wnid = split_classes("miniimagenet", "test")[0]
    assert torch.equal(
        by_class(pool)[test_wnid], torch.from_numpy(expected_rows(contents["test"], test_wnid))
    )
    sup = get_dataset(
        "miniimagenet", root=tmp_path, split="train", protocol="supervised", image_size=SIZE
    )
    assert sup.classes == every and len(sup) == 100 * round(0.7 * PER_CLASS)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    write_cache(tmp_path, skip=("val",))
    for split in SPLITS:  # even train fails: validation would need the file later
        with pytest.raises(DataNotFoundError, match="lacks mini-imagenet-cache-validation.pkl"):
            get_dataset("miniimagenet", root=tmp_path, split=split)
    (tmp_path / L2L_CACHE["test"]).unlink()
    with pytest.raises(DataNotFoundError) as err:
        get_dataset("miniimagenet", root=tmp_path, split="train")
    assert "mini-imagenet-cache-validation.pkl and mini-imagenet-cache-test.pkl" in str(err.value)


class RunsCommand:
    """Pickles as a call of os.system: a full unpickle would run ``command``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class CallsEval:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('pathlib').Path('EVAL_RAN').touch()",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_malicious_pickle_is_refused_and_never_run(
    tmp_path: Path, payload: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / ("SYSTEM_RAN" if payload == "system" else "EVAL_RAN")
    write_cache(tmp_path / "root")
    evil = tmp_path / "root" / L2L_CACHE["val"]
    attack = RunsCommand(f"touch {marker}") if payload == "system" else CallsEval()
    content = l2l_content("val", seed=1)
    content["class_dict"]["extra"] = attack  # hidden inside an otherwise genuine file
    evil.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle") as err:
        get_dataset("miniimagenet", root=tmp_path / "root", split="val")
    named = "posix.system" if payload == "system" else "builtins.eval"
    assert str(evil) in str(err.value) and named in str(err.value)
    assert isinstance(err.value, UserError) and not marker.exists()
    # A command line prints it as one line and exits 2.
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(lambda: get_dataset("miniimagenet", root=tmp_path / "root", split="val"))()
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()


def test_only_latin1_codec_is_allowed(tmp_path: Path) -> None:
    # protocol 2 carries bytes as _codecs.encode(text, "latin1"); other codecs are refused
    path = tmp_path / "codec.pkl"
    path.write_bytes(
        b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00utf-7\x86R."
    )
    with pytest.raises(UnsafePickleError, match="'utf-7'"):
        load_data_pickle(path)


def test_damaged_or_foreign_files(tmp_path: Path) -> None:
    write_cache(tmp_path)
    test_file = tmp_path / L2L_CACHE["test"]
    test_file.write_bytes(test_file.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a complete pickle"):
        get_dataset("miniimagenet", root=tmp_path, split="test")
    cases = [
        ({"images": np.zeros((2, 84, 84, 3), np.uint8)}, "keys 'image_data' and 'class_dict'"),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.float32), "class_dict": {"a": [0]}},
            "image_data is float32",
        ),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 2]}},
            "rows that are not indices 0..1",
        ),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0], "b": [0]}},
            "another class lists too",
        ),
    ]
    for content, message in cases:
        test_file.write_bytes(pickle.dumps(content))
        with pytest.raises(UserError, match=message):
            get_dataset("miniimagenet", root=tmp_path, split="test")


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    write_cache(tmp_path)
    first = get_dataset("miniimagenet", root=tmp_path, split="test", image_size=SIZE)
    again = get_dataset("miniimagenet", root=tmp_path, split="test", image_size=SIZE)
    assert torch.equal(first.get_batch([0]), again.get_batch([0]))
    other = l2l_content("test", seed=99)
    path = tmp_path / L2L_CACHE["test"]
    path.write_bytes(pickle.dumps(other, protocol=4))
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    fresh = get_dataset("miniimagenet", root=tmp_path, split="test", image_size=SIZE)
    wnid = fresh.classes[0]
    assert torch.equal(by_class(fresh)[wnid], torch.from_numpy(expected_rows(other, wnid)))
