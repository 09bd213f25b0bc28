"""bmssl.provenance: the record every result carries, the git state, and cached data fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bmssl import provenance
from bmssl.provenance import DataRef

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_the_record_holds_code_software_machine_settings_and_what_the_caller_adds() -> None:
    record = provenance.collect(
        datasets={"x": {"kind": "files", "sha256": "ab" * 32}}, configs={"steps": 3},
        command={"argv": ["--quiet"]}, wall_time_s=1.23456, started_at="then", extra_key=7,
    )  # fmt: skip
    json.dumps(record)  # JSON-able as is
    assert record["schema"] == provenance.SCHEMA and record["wall_time_s"] == 1.235
    assert set(record["code"]) >= {"commit", "dirty", "diff_sha256", "version"}
    assert record["code"]["version"] == provenance.harness_version()
    assert set(record["packages"]) >= {"torch", "torchvision", "higher", "ray", "numpy", "numba"}
    assert torch.__version__.startswith(record["packages"]["torch"].split("+")[0])
    machine = record["machine"]
    assert machine["cpu"] and machine["cpu_cores"] >= 1
    assert machine["gpu_count"] == len(machine["gpus"]) and "cuda" in machine and "cudnn" in machine
    settings = record["torch"]
    assert settings["threads"] == torch.get_num_threads()
    assert {"deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark", "tf32_matmul",
            "tf32_cudnn"} <= set(settings)  # fmt: skip
    assert record["configs"] == {"steps": 3} and record["extra_key"] == 7
    assert record["command"] == {"argv": ["--quiet"]} and record["started_at"] == "then"
    line = provenance.summary_line(record)
    assert "\n" not in line and line.startswith("Provenance: bmssl-harness")
    assert f"torch {record['packages']['torch']}" in line and "x abababab" in line


@needs_git
def test_the_commit_and_dirty_state_are_this_checkout_s() -> None:
    root = provenance.source_root()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    code = provenance.code_state()
    assert code["commit"] == head.stdout.decode().strip()
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True)
    assert code["dirty"] == bool(status.stdout.strip())
    assert (code["diff_sha256"] is not None) == code["dirty"]


@needs_git
def test_local_edits_and_untracked_files_change_the_diff_hash(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    (tmp_path / "table1.out").write_text("a log beside the checkout\n")  # not code: still clean
    states = []
    for step in ("clean", "edited", "untracked"):
        if step == "edited":
            (tmp_path / "a.py").write_text("x = 2\n")
        if step == "untracked":
            (tmp_path / "new.py").write_text("y = 1\n")
        provenance.code_state.cache_clear()
        states.append(provenance.code_state(tmp_path))
    clean, edited, untracked = states
    assert clean["commit"] and clean["dirty"] is False and clean["diff_sha256"] is None
    assert edited["dirty"] and edited["changed_files"] == 1 and edited["diff_sha256"]
    assert untracked["untracked_files"] == 1
    assert untracked["diff_sha256"] not in (None, edited["diff_sha256"])
    provenance.code_state.cache_clear()


def test_a_folder_outside_git_has_no_commit(tmp_path: Path) -> None:
    provenance.code_state.cache_clear()
    try:
        assert provenance.code_state(tmp_path)["commit"] is None
    finally:
        provenance.code_state.cache_clear()


def test_a_folder_s_bytes_are_hashed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    data, cache = tmp_path / "set", tmp_path / "cache"
    (data / "b").mkdir(parents=True)
    (data / "a.png").write_bytes(b"\x00" * 100)
    (data / "b" / "c.png").write_bytes(b"\x01" * 50)
    refs = [DataRef("imagefolder:" + str(data)), DataRef("omniglot", str(data / "b"))]
    first = provenance.fingerprint_datasets(refs, cache)
    entry = first[refs[0].key]
    assert entry["kind"] == "files" and entry["files"] == 2 and entry["bytes"] == 150
    assert first[refs[1].key]["files"] == 1
    assert (cache / provenance.CACHE_FILE).is_file()
    # Same size and modification time: the cached hash is used, the bytes are not read again
    # (by a later process: this one remembers the folder without even listing it).
    stat = (data / "a.png").stat()
    provenance._SEEN.clear()
    (data / "a.png").write_bytes(b"\x02" * 100)
    os.utime(data / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert provenance.fingerprint_datasets(refs, cache)[refs[0].key]["sha256"] == entry["sha256"]
    # A new modification time: hashed again, and the new bytes give a new fingerprint.
    os.utime(data / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    provenance._SEEN.clear()
    assert provenance.fingerprint_datasets(refs, cache)[refs[0].key]["sha256"] != entry["sha256"]
    missing = provenance.fingerprint_datasets([DataRef("omniglot", str(tmp_path / "no"))], cache)
    assert missing["omniglot=" + str(tmp_path / "no")]["kind"] == "missing"


def test_an_offline_set_is_fingerprinted_by_its_generated_bytes_without_touching_the_rng(
    tmp_path: Path,
) -> None:
    from bmssl.data import get_dataset

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    ref = DataRef("digits", None, 28)
    entry = provenance.fingerprint_datasets([ref], tmp_path)[ref.key]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    pool = get_dataset("digits", None, split="train", protocol="unlabeled", image_size=28)
    digest = hashlib.sha256(pool.get_batch(np.arange(len(pool))).numpy().tobytes())
    digest.update(np.asarray(pool.targets, dtype=np.int64).tobytes())
    assert entry == {
        "kind": "generated", "sha256": digest.hexdigest(), "images": 1797, "shape": [1, 28, 28]
    }  # fmt: skip
    cached = json.loads((tmp_path / provenance.CACHE_FILE).read_text())
    assert any(k.startswith("generated:digits 28px") for k in cached)
    assert provenance.fingerprint_datasets([ref], tmp_path)[ref.key] == entry


def test_fingerprints_can_be_switched_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(provenance.FINGERPRINT_ENV, "0")
    entry = provenance.fingerprint_datasets([DataRef("digits", None, 28)], tmp_path)
    assert entry["digits 28px"]["kind"] == "skipped"


@dataclass
class _Config:
    dataset: str = "digits"
    data_root: str | None = None
    image_size: int = 28


@dataclass
class _Eval:
    dataset: str
    root: str | None
    image_size: int


@dataclass
class _Job:
    config: _Config
    evaluations: tuple[_Eval, ...]


def test_the_datasets_of_jobs_configs_and_evaluations_are_found() -> None:
    job = _Job(_Config(), (_Eval("glyphs", None, 28), _Eval("cub", "/data/cub", 84)))
    keys = [r.key for r in provenance.dataset_refs(job, [job])]
    assert keys == ["cub=/data/cub", "digits 28px", "glyphs 28px"]


def test_differences_list_the_keys_that_changed() -> None:
    a = {"code": {"commit": "a"}, "packages": {"torch": "2.1"}, "created_at": "x"}
    b = {"code": {"commit": "b"}, "packages": {"torch": "2.1"}, "created_at": "y"}
    assert provenance.differences(a, b) == [("code.commit", "a", "b")]
