"""Issue 23, items 2, 4, 5 and 7, through the command lines in this process: bounded messages,
ambiguity refused, half-done work cleaned up, hostile image folders. (Item 1 is in
``test_round3_security.py``, the properties of item 3 in ``tests/fuzz``, item 6 in
``test_message_fixes.py``; the disk-full cases need a tmpfs and are in
``test_hostile_inputs.py``.)
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fuzz.cli import assert_runs_or_exits_2, run

TINY = [
    "dataset=digits", "width=4", "proj_hidden=8", "proj_dim=4", "task_images=3", "support_views=2",
    "query_views=1", "meta_batch=1", "steps=2", "eval_every=2", "eval_episodes=2", "device=cpu",
]  # fmt: skip
#: on a small image tree (10 classes of 17 images): tasks of 2 images, 2-way validation
IMG = [t for t in TINY if not t.startswith(("task_images=", "dataset="))] + [
    "task_images=2", "eval_n_way=2", "eval_k_shot=1", "image_size=16"
]  # fmt: skip


def _bmssl(argv):
    from bmssl.__main__ import main

    return run(main, argv)


def _tuning(argv):
    from tuning.__main__ import main

    return run(main, argv)


def _one_line(ran) -> str:
    assert ran.code == 2, ran.err
    assert len(ran.error_lines()) == 1 and "Traceback" not in ran.err, ran.err
    return ran.error_lines()[0]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory of its own: nothing may land in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- bounded parsing and messages (item 2) --------------------------------------------------


def test_a_huge_value_gives_a_short_message_at_once(here):
    start = time.perf_counter()
    line = _one_line(_bmssl(["print-config", "bmssl", "augment=" + "x" * 1_000_000]))
    assert time.perf_counter() - start < 10 and len(line) < 400 and "1000000 characters" in line
    line = _one_line(_bmssl(["print-config", "bmssl", "steps=" + "9" * 100_000]))
    assert "out of range" in line and len(line) < 400


def test_a_table_profile_of_aliases_is_refused(here):
    profiles = pytest.importorskip("reproduce.profiles")
    from bmssl.errors import UserError

    lines = ['a0: &a0 "lol"'] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)
    ]
    path = here / "profile.yaml"
    path.write_text("\n".join([*lines, "episodes: *a8"]) + "\n")
    with pytest.raises(UserError, match="alias"):
        profiles.load_profile(profiles.Table1Profile, "table1", str(path))


# -- ambiguity (item 5) ---------------------------------------------------------------------


def test_an_option_given_twice_names_both_values(here):
    line = _one_line(_bmssl(["train", "--out", "a", "--out", "b", *TINY]))
    assert "--out is given twice" in line and "'a'" in line and "'b'" in line
    line = _one_line(
        _tuning(["search", "bmssl", "--space", "bmssl-delta", "--out", "x", "--storage", "y"])
    )
    assert "given twice" in line and "'x'" in line and "'y'" in line
    assert not any(here.iterdir())


def test_a_key_given_twice_names_both_values(here):
    line = _one_line(_bmssl(["train", "--out", "run", *TINY, "steps=5"]))
    assert "steps is given twice ('steps=2' and 'steps=5')" in line and not (here / "run").exists()
    (here / "c.yaml").write_text("steps: 3\nwidth: 4\nsteps: 4\n")
    line = _one_line(_bmssl(["print-config", "bmssl", "--config", "c.yaml"]))
    assert "gives 'steps' twice ('3' at line 1, '4' at line 3)" in line


@pytest.mark.parametrize("out", ["", " ", "\t"])
def test_an_empty_out_is_refused(here, out):
    line = _one_line(_bmssl(["train", "--out", out, *TINY]))
    assert "is empty" in line and list(here.iterdir()) == []


# -- extremes of the search options (item 3, options at their extremes) ------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--num-samples", "0"), ("--num-samples", str(2**64)), ("--search-seed", "-1"),
        ("--search-seed", str(2**70)), ("--seeds", "0,-1"), ("--seeds", str(2**64)),
        ("--max-concurrent", "-3"), ("--grace-period", "0"), ("--num-cpus", str(10**30)),
        ("--gpus-per-trial", "nan"), ("--cpus-per-trial", "inf"), ("--cpus-per-trial", "-1"),
    ],
)  # fmt: skip
def test_search_options_at_their_extremes_exit_2_before_writing(here, option, value):
    argv = ["search", "bmssl", "--space", "bmssl-delta", "--config", "tiny", "--out", "store"]
    line = _one_line(_tuning([*argv, option, value]))
    assert option in line and not (here / "store").exists()


# -- half-done work (item 4) ----------------------------------------------------------------


def test_a_new_run_that_fails_leaves_no_folder(here):
    ran = _bmssl(["train", "--quiet", "--out", "new/deeper/" + "x" * 300, *TINY])
    assert "too long" in _one_line(ran) and not (here / "new").exists()


def test_export_into_a_folder_is_refused_and_a_failed_export_leaves_nothing(here):
    ran = _bmssl(["train", "--quiet", "--out", "run", *TINY])
    assert ran.code == 0, ran.err
    (here / "target").mkdir()
    line = _one_line(_bmssl(["export", "--out", "run", "--to", "target"]))
    assert "'target' is a folder" in line and "--to target/backbone.pt" in line
    assert list((here / "target").iterdir()) == []
    line = _one_line(_bmssl(["export", "--out", "run", "--to", "new/sub/" + "x" * 300 + ".pt"]))
    assert "too long" in line and not (here / "new").exists()
    assert _bmssl(["export", "--out", "run", "--to", "target/b.pt"]).code == 0
    assert (here / "target" / "b.pt").is_file()


@pytest.mark.ray
def test_a_search_refused_for_resources_writes_nothing(here, monkeypatch):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    argv = ["search", "bmssl", "--space", "bmssl-delta", "--config", "tiny", "--out", "store"]
    line = _one_line(_tuning([*argv, "--quiet", "--num-cpus", "1", "--cpus-per-trial", "2"]))
    assert "2 CPUs per trial but the machine has 1" in line
    assert not (here / "store").exists(), "the refused search left its folder or spec"
    shutil.rmtree(ray_tmp, ignore_errors=True)


# -- image folders (item 7) -----------------------------------------------------------------


def _png(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _tree(root: Path, classes: int = 10, per_class: int = 17) -> None:
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"c{c}" / f"{i}.png", 16, c * 100 + i)


def _bomb(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A 60-byte PNG whose header declares ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_line_naming_it_or_skipped(here):
    _tree(here / "tree")
    for c in range(10):  # one in every class, so training or validation meets one
        _bomb(here / "tree" / f"c{c}" / "0.png")
    argv = ["train", "--quiet", "--out", "run", *IMG, "dataset=imagefolder:tree"]
    line = _one_line(_bmssl(argv))
    assert "/0.png" in line and "decompression-bomb" in line and "--skip-corrupt" in line
    assert not (here / "run").exists()
    for n, skip in enumerate(("--skip-corrupt", "skip_corrupt=true")):
        ran = _bmssl([f"run{n}" if a == "run" else a for a in argv] + [skip])
        assert ran.code == 0, ran.err
        assert (here / f"run{n}" / "checkpoints" / "last.pt").is_file()


def test_a_class_whose_images_sit_one_folder_deeper_is_named(here):
    _tree(here / "tree")
    (here / "tree" / "c5" / "2019").mkdir()
    for image in (here / "tree" / "c5").glob("*.png"):
        image.rename(here / "tree" / "c5" / "2019" / image.name)
    argv = ["train", "--quiet", "--out", "run", *IMG, "dataset=imagefolder:tree"]
    line = _one_line(_bmssl(argv))
    assert "class folder" in line and "c5" in line and "2019" in line and "move them up" in line
    assert not (here / "run").exists()


def test_every_command_that_reads_images_takes_skip_corrupt():
    from bissl.__main__ import build_parser as bissl_parser
    from bmssl.__main__ import _parser as bmssl_parser
    from tests.message_fixes import _sub
    from tuning.__main__ import build_parser as tuning_parser

    for parser, verbs in (
        (bmssl_parser(None), ["train", "eval"]),
        (bissl_parser(), ["run", "baseline", "pretext"]),
        (tuning_parser(None), ["search"]),
    ):
        for verb in verbs:
            assert "--skip-corrupt" in _sub(parser, verb)._option_string_actions, verb


def test_contract_of_a_hostile_image_tree_on_every_verb(here):
    """Truncated files and a bomb among good images: eval and train either run or exit 2."""
    _tree(here / "tree")
    (here / "tree" / "c3" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    _bomb(here / "tree" / "c4" / "2.png", 70_000, 2_000)
    argv = ["train", "--quiet", "--out", "run", *IMG, "dataset=imagefolder:tree"]
    assert_runs_or_exits_2(_bmssl(argv), argv, here / "run")
