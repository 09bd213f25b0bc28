"""``hf:<hub-name>``: Hub datasets through ``datasets.load_dataset``, never the network.

``datasets.load_dataset`` is replaced by a fake that returns a small DatasetDict built here (or
raises what the real one raises); one test runs the real one in a subprocess with offline mode
on and sockets refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bmssl.data import get_dataset
from bmssl.data.hf import is_hub_id
from bmssl.errors import DataNotFoundError, UserError
from tests.fakes import class_names, hf_table, tree_colour

datasets = pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[3]
CLASSES = class_names(12)


def hub_dict() -> Any:
    """A Hub-like DatasetDict: train / validation / test over disjoint classes (4 each), every
    member labelled with the same ClassLabel of all 12 classes, as Hub datasets are."""
    features = hf_table(CLASSES, 1).features
    parts = {}
    for name, lo in (("train", 0), ("validation", 4), ("test", 8)):
        table = hf_table(CLASSES[lo : lo + 4], per_class=3, offset=lo)
        rows = {"img": table["img"], "label": [lo + v for v in table["label"]]}
        parts[name] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(parts)


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records each call and answers from ``result``."""

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = hub_dict() if result is None and error is None else result
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, path: str, **kwargs: Any) -> Any:
        self.calls.append((path, kwargs))
        if self.error is not None:
            raise self.error
        if kwargs.get("split") is not None:
            return self.result[kwargs["split"]]
        return self.result


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)  # no folder here is named like a Hub dataset
    return fake


def centre_colour(image: torch.Tensor) -> tuple[int, ...]:
    h, w = image.shape[1:]
    return tuple(int(v) for v in image[:, h // 2, w // 2].mul(255).round())


def test_hub_ids_and_paths_are_told_apart() -> None:
    for name in ("ylecun/mnist", "mnist", "uoft-cs/cifar10", "Org.Name/data_set.v2", "a" * 96):
        assert is_hub_id(name), name
    for name in ("a/b/c", "/abs/name", "owner/", "-x/y", "x--y", "a..b", "a" * 97, "é/x", ""):
        assert not is_hub_id(name), name


def test_the_name_and_options_are_passed_through(hub: FakeHub) -> None:
    get_dataset("hf:owner/name", split="val", image_size=8)
    assert hub.calls == [
        ("owner/name", {"name": None, "split": None, "revision": None, "cache_dir": None})
    ]
    hub.calls.clear()
    get_dataset(
        "hf:owner/name",
        split="train",
        protocol="supervised",
        image_size=8,
        hub_config="full",
        hub_revision="0123abc",
        hub_split="train",
        cache_dir="/some/cache",
    )
    assert hub.calls == [
        (
            "owner/name",
            {"name": "full", "split": "train", "revision": "0123abc", "cache_dir": "/some/cache"},
        )
    ]
    get_dataset("hf:mnist", split="test", image_size=8)  # a name without an owner
    assert hub.calls[-1][0] == "mnist"


def test_images_labels_and_fewshot_splits(hub: FakeHub) -> None:
    for split, lo in (("train", 0), ("val", 4), ("test", 8)):
        ds = get_dataset("hf:owner/name", split=split, image_size=8)
        assert ds.classes == CLASSES[lo : lo + 4] and len(ds) == 12
        assert ds.image_shape == (3, 8, 8)
        for i in range(len(ds)):
            image, label = ds[i]
            assert centre_colour(image) == tree_colour(lo + label)
    grey = get_dataset("hf:owner/name", split="test", image_size=6, channels=1, preload=True)
    assert grey.image_shape == (1, 6, 6) and grey.in_memory


def test_splits_are_mapped_as_for_a_saved_dataset(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = datasets.DatasetDict(
        {
            "train": hf_table(CLASSES[:4], 5),
            "validation": hf_table(CLASSES[:4], 1),
            "test": hf_table(CLASSES[:4], 2),
        }
    )
    monkeypatch.setattr(hub, "result", shared)
    shared.save_to_disk(str(tmp_path / "saved"))
    for protocol in ("supervised", "unlabeled"):
        for split in ("train", "val", "test") if protocol == "supervised" else ("train",):
            from_hub = get_dataset("hf:owner/name", split=split, protocol=protocol, image_size=8)
            saved = get_dataset(
                f"hf:{tmp_path / 'saved'}", split=split, protocol=protocol, image_size=8
            )
            assert from_hub.classes == saved.classes and from_hub.targets == saved.targets
            everything = np.arange(len(saved))
            assert torch.equal(from_hub.get_batch(everything), saved.get_batch(everything))
    sizes = [
        len(get_dataset("hf:owner/name", split=s, protocol="supervised", image_size=8))
        for s in ("train", "val", "test")
    ]
    assert sizes == [20, 4, 8]
    # Shared classes across members: the few-shot protocol refuses them, as for disk datasets.
    with pytest.raises(UserError, match="class-disjoint"):
        get_dataset("hf:owner/name", split="train", image_size=8)
    # One member asked for (hub_split): a single table, split by class like a saved Dataset.
    big = datasets.DatasetDict({"train": hf_table(CLASSES[:10], 2), "test": shared["test"]})
    monkeypatch.setattr(hub, "result", big)
    big["train"].save_to_disk(str(tmp_path / "saved-train"))
    for split in ("train", "test"):
        one = get_dataset("hf:owner/name", split=split, image_size=8, hub_split="train")
        alike = get_dataset(f"hf:{tmp_path / 'saved-train'}", split=split, image_size=8)
        assert one.classes == alike.classes and one.targets == alike.targets and len(one) > 0
    assert hub.calls[-1][1]["split"] == "train"


def test_offline_and_not_cached(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # What datasets raises offline for a name it has not cached.
    hub.error = ConnectionError("Couldn't reach 'owner/name' on the Hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataNotFoundError) as err:
        get_dataset("hf:owner/name", split="train")
    message = str(err.value)
    assert "hf:owner/name: not in the Hugging Face datasets cache" in message
    assert "offline mode is on (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE)" in message
    assert "run once with network access" in message and "\n" not in message
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub"):
        get_dataset("hf:owner/name", split="train")


def test_the_real_load_dataset_offline_says_so(tmp_path: Path) -> None:
    # The real datasets library, offline, with an empty cache and every socket refused.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('a test tried the network')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from bmssl.errors import cli_entry\n"
        "from bmssl.data import get_dataset\n"
        "cli_entry(lambda: get_dataset('hf:someone/not-cached', split='train'))()\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a test tried the network" not in done.stderr
    assert "hf:someone/not-cached: not in the Hugging Face datasets cache" in lines[0]


def test_bad_names_and_failures(hub: FakeHub, tmp_path: Path) -> None:
    for name in ("hf:a/b/c", "hf:not a name", f"hf:{tmp_path / 'absent'}", "hf:./mnist",
                 "hf:../owner/name"):  # fmt: skip
        with pytest.raises(DataNotFoundError, match="no such folder, and not a Hugging Face Hub"):
            get_dataset(name)
    assert hub.calls == []  # never sent to the Hub
    hub.error = datasets.exceptions.DatasetNotFoundError("Dataset 'owner/gone' doesn't exist")
    with pytest.raises(DataNotFoundError, match="no dataset 'owner/gone' on the Hugging Face Hub"):
        get_dataset("hf:owner/gone")
    hub.error = ValueError("BuilderConfig 'nope' not found. Available: ['full']\nmore")
    with pytest.raises(UserError) as err:
        get_dataset("hf:owner/name", hub_config="nope")
    assert str(err.value) == (
        "hf:owner/name (config 'nope'): datasets.load_dataset failed: "
        "BuilderConfig 'nope' not found. Available: ['full']"
    )
    hub.error = RuntimeError("a bug")  # not a failure we can explain: kept as it is
    with pytest.raises(RuntimeError, match="a bug"):
        get_dataset("hf:owner/name")


def test_a_local_folder_wins_over_a_hub_name(hub: FakeHub, tmp_path: Path) -> None:
    hf_table(CLASSES, per_class=2).save_to_disk(str(tmp_path / "owner" / "name"))
    ds = get_dataset("hf:owner/name", split="test", image_size=8)  # cwd is tmp_path
    assert hub.calls == [] and len(ds) == 2 * len(ds.classes)
    with pytest.raises(UserError, match="hub_revision apply only to Hub names"):
        get_dataset("hf:owner/name", hub_revision="main")
    (tmp_path / "plain" / "folder").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="a local folder wins over the Hub dataset"):
        get_dataset("hf:plain/folder")
