"""Issue 23, item 6: every fix an error message suggests is runnable as written.

Each case runs a command that fails in a way whose message suggests a fix, then parses every
flag (``--name``) and option (``key=value``) out of the message and checks that the command
the user ran accepts it (:mod:`tests.message_fixes`). ``tests/test_hostile_inputs.py`` applies
the same check to the message of every one of its cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fuzz.cli import run
from tests.message_fixes import suggestions, unrunnable_fixes

TINY = [
    "dataset=digits", "width=4", "proj_hidden=8", "proj_dim=4", "task_images=3", "support_views=2",
    "query_views=1", "meta_batch=1", "steps=2", "eval_every=2", "eval_episodes=2", "device=cpu",
]  # fmt: skip
SEARCH = ["search", "bmssl", "--space", "bmssl-delta", "--config", "tiny", "--quiet"]


def _main(module: str):
    if module == "bmssl":
        from bmssl.__main__ import main
    elif module == "bissl":
        from bissl.__main__ import main
    else:
        from tuning.__main__ import main
    return main


def _check(module: str, argv: list[str], *expected: str) -> str:
    """Run ``python -m module argv`` here; it must exit 2 with one line holding ``expected``,
    and every fix the line suggests must be one the command takes."""
    ran = run(_main(module), argv)
    lines = ran.error_lines()
    assert ran.code == 2 and len(lines) == 1, ran.err
    for text in expected:
        assert text in lines[0], lines[0]
    problems = unrunnable_fixes(["-m", module, *argv], lines[0])
    assert not problems, f"{lines[0]}\n-> {problems}"
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BMSSL_TRUST_DIR", str(tmp_path / "trust"))
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    ran = run(_main("bmssl"), ["train", "--quiet", "--out", str(run_dir), *TINY])
    assert ran.code == 0, ran.err
    return run_dir


def test_the_parser_finds_flags_and_options():
    flags, keys = suggestions(
        "pass skip_corrupt=True (--skip-corrupt); not '/a/b=c.png'; key=value, eg steps=1"
    )
    assert flags == ["--skip-corrupt"] and keys == ["skip_corrupt", "steps"]


def test_an_unreadable_image_suggests_skip_corrupt_which_train_takes(here):
    rng = np.random.default_rng(0)
    for c in range(10):
        folder = here / "tree" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(17):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                folder / f"{i}.png"
            )
        (folder / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    argv = [
        "train",
        "--quiet",
        "--out",
        "run",
        *[t for t in TINY if not t.startswith(("dataset", "task_images"))],
    ]
    argv += ["task_images=2", "eval_n_way=2", "image_size=16", "dataset=imagefolder:tree"]
    _check("bmssl", argv, "skip_corrupt=True", "--skip-corrupt")


def test_a_bad_checkpoint_suggests_what_train_and_eval_take(here, trained):
    copy = here / "copy"
    copy.mkdir()
    (copy / "checkpoints").mkdir()
    (copy / "checkpoints" / "last.pt").write_bytes(
        (trained / "checkpoints" / "last.pt").read_bytes()[:100]
    )
    _check("bmssl", ["eval", "--quiet", "--out", str(copy)], "last.pt")
    _check("bmssl", ["train", "--quiet", "--out", str(copy), *TINY], "last.pt")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--out", "r", *TINY, "steps"], "unknown method"),
        (["train", "bmssl", "--out", "r", *TINY, "steps"], "key=value"),
        (["eval", "n_way=2"], "--checkpoint"),
        (["export", "--out", "nowhere"], "--checkpoint"),
        (["train", "--out", "r", *TINY, "seed=-3"], "seed"),
        (["train", "--out", "r", *TINY[1:], "dataset=imagefolder:loose"], "train_protocol"),
    ],
)
def test_bmssl_messages(here, argv, expected):
    (here / "loose").mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4)).save(here / "loose" / f"{i}.png")
    _check("bmssl", argv, expected)


def test_a_locked_run_folder_suggests_another_out(here, trained):
    from bmssl.runlock import RunLock

    with RunLock(trained):
        _check("bmssl", ["train", "--quiet", "--out", str(trained), *TINY], "another --out")


def test_a_missing_dataset_root_suggests_the_option_of_the_command(here):
    _check("bmssl", ["train", "--out", "r", *TINY[1:], "dataset=omniglot"], "omniglot")


def test_bissl_messages(here):
    _check("bissl", ["run", "--out", "r", "init_from=nowhere.pt"], "init_from")
    _check("bissl", ["print-config", "bilevel.lam=-1"], "bilevel.lam")


def test_tuning_messages(here):
    from tuning.plan import SearchRequest, make_plan

    _check("tuning", [*SEARCH, "--out", "store", "--resume"], "--resume", "--name")
    _check("tuning", [*SEARCH, "--gpus-per-trial", "2", "--out", "store"], "--gpus-per-trial")
    bissl = ["search", "bissl", "--space", "bissl-lambda-gamma", "--scheduler", "asha"]
    _check("tuning", [*bissl, "--out", "store"], "--scheduler fifo")
    search = here / "store" / "bmssl-bmssl-delta"
    search.mkdir(parents=True)
    (search / "tuner.pkl").write_bytes(b"")
    _check("tuning", [*SEARCH, "--num-samples", "1", "--out", "store"], "--resume", "--name")
    plan = make_plan(SearchRequest("bmssl", "bmssl-delta", config="tiny", num_samples=1))
    (search / "tuning_spec.json").write_text(json.dumps(plan.to_json()))
    _check("tuning", [*SEARCH, "--num-samples", "2", "--out", "store", "--resume"], "num_samples")
    _check("tuning", [*SEARCH, "--num-samples", "1", "--out", "store", "--resume"], "no record")
