"""bmssl.data.crossdomain: the cross-domain targets read from their real layouts (tiny copies)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from bmssl.data import get_dataset
from bmssl.data.crossdomain import tseng_part
from bmssl.errors import DataNotFoundError, UserError
from reproduce.smoke_data import ensure_root

NEEDS = {"test": (5, 4)}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("crossdomain")
    names = ("eurosat", "cropdiseases", "isic2018", "chestx", "cub-fs", "cars-fs", "places",
             "plantae")  # fmt: skip
    return {name: ensure_root(name, cache, NEEDS) for name in names}


@pytest.mark.parametrize(
    ("name", "classes"),
    [("eurosat", 10), ("cropdiseases", 6), ("isic2018", 7), ("chestx", 7)],
)
def test_bscd_sets_test_on_every_class(roots, name, classes) -> None:
    test = get_dataset(name, roots[name], split="test", image_size=16)
    assert test.num_classes == classes and test[0][0].shape == (3, 16, 16)
    counts = np.bincount(test.targets, minlength=classes)
    assert sorted(counts.tolist(), reverse=True)[:5] == [4] * 5  # the episodes' classes
    with pytest.raises(UserError, match="cross-domain evaluation set"):
        get_dataset(name, roots[name], split="train", image_size=16)
    pooled = get_dataset(name, roots[name], split="train", protocol="unlabeled", image_size=16)
    assert len(pooled) == len(test)


def test_chestx_keeps_single_findings_of_the_seven_labels(roots) -> None:
    test = get_dataset("chestx", roots["chestx"], split="test", image_size=16)
    # the copy adds a two-finding row and a "No Finding" row: neither is read
    assert len(test) == 5 * 4 + 2 * 1
    assert test.classes[0] == "Atelectasis"


def test_isic_labels_are_the_one_hot_columns(roots) -> None:
    test = get_dataset("isic2018", roots["isic2018"], split="test", image_size=16)
    assert test.classes == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert np.bincount(test.targets).tolist() == [4, 4, 4, 4, 4, 1, 1]


@pytest.mark.parametrize("name", ["cub-fs", "cars-fs", "places", "plantae"])
def test_tseng_sets_cut_classes_by_index(roots, name) -> None:
    splits = {
        s: get_dataset(name, roots[name], split=s, image_size=16) for s in ("train", "val", "test")
    }
    assert [splits[s].num_classes for s in ("train", "val", "test")] == [10, 5, 5]
    seen = set(splits["train"].classes) | set(splits["val"].classes)
    assert not set(splits["test"].classes) & seen
    assert np.bincount(splits["test"].targets).tolist() == [4] * 5


def test_tseng_rule() -> None:
    assert tseng_part(8) == ["train", "val", "train", "test", "train", "val", "train", "test"]


def test_missing_and_incomplete_roots_say_what_is_expected(tmp_path, roots) -> None:
    with pytest.raises(DataNotFoundError, match=r"none of 2750, eurosat/2750"):
        get_dataset("eurosat", tmp_path, split="test")
    with pytest.raises(DataNotFoundError, match="needs a local root"):
        get_dataset("chestx", None, split="test")
    broken = tmp_path / "isic"
    (broken / "ISIC2018_Task3_Training_GroundTruth").mkdir(parents=True)
    src = roots["isic2018"] / "ISIC2018_Task3_Training_GroundTruth"
    for f in src.iterdir():
        (broken / "ISIC2018_Task3_Training_GroundTruth" / f.name).write_text(f.read_text())
    with pytest.raises(DataNotFoundError, match="listed images are missing"):
        get_dataset("isic2018", broken, split="test")


def test_eurosat_pin_is_torchvisions() -> None:
    from torchvision.datasets import eurosat

    from bmssl.data.fetch_catalog import EUROSAT_MD5, EUROSAT_URL, catalogue

    source = inspect.getsource(eurosat)
    assert EUROSAT_MD5 in source and EUROSAT_URL in source.replace('"\n', "").replace(" ", "")
    assert catalogue()["eurosat"].files[0].produces == ("2750",)


def test_channel_adapter_repeats_grey_and_takes_luma() -> None:
    from reproduce.fewshot_jobs import ChannelAdapted, with_channels

    grey = get_dataset("digits", split="test", image_size=8)
    rgb = with_channels(grey, 3)
    assert rgb.get_batch([0, 1]).shape == (2, 3, 8, 8)
    assert torch.equal(rgb.get_batch([0])[0, 2], grey.get_batch([0])[0, 0])
    back = ChannelAdapted(rgb, 1)
    assert torch.allclose(back.get_batch([0]), grey.get_batch([0]), atol=1e-6)
    assert with_channels(grey, 1) is grey
