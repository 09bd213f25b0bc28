"""Every case of the hostile-input review (``shared/reviews/reliability.md``, issue 15) as a test.

Each case runs one command line of the harness (``python -m bmssl``, ``python -m bissl``,
``python reproduce/table1.py``, ``python -m tuning``) in a process of its own and checks what a
user would see: the exit code (2 for a user error, 0 where the case must now succeed), no
``Traceback`` on stderr, ONE line of error naming the bad value or file, and an untouched
``--out`` (not created, or for a refused resume left byte-identical). Case ids are the review's
(``c01``, ``b01``, ``y05``, ``f03``, ``t04``, ``r03``, ...); an id with a letter suffix is a
variant the review did not run (``c15u`` a checkpoint that needs full unpickling, ``c29b`` a
damaged saved dataset, ``c40m`` a bare word after the method, ``b04k`` the removed ``preset=``,
``t04k`` ``episodes=abc`` on the command line, ``t09s`` ``--seeds 0``). The third round (issue
23) added ``r13``-``r14``, ``y06``-``y07``, ``c42``-``c49``, ``e01``-``e02`` and ``f05``. A case
the harness does not pass yet is a strict xfail saying what is wrong. Every error line must also
suggest only flags and options its command takes (``tests/message_fixes.py``). The hostile
images of c24 (16-bit, RGBA, palette, 1-bit, CMYK) are checked pixel by pixel in
``tests/test_hostile_images.py``.

Left out, because other tests already run them:
- r02 (resume after SIGKILL, identical weights): tests/bmssl/test_pretrainers.py
  ``test_killed_process_resumes_to_the_same_weights``;
- t10, t11 (table1 Ctrl-C: exit 130, then a rerun finishes): tests/reproduce/test_table1.py
  ``test_ctrl_c_stops_the_workers_and_a_rerun_finishes``;
- r10, r13 (Ray Tune SIGINT: exit 130, ``--resume`` finishes): tests/tuning/test_search.py
  (SIGKILL then SIGINT of a search, each resumed).

Speed: importing torch costs seconds on the shared 2-core box, ~100 cases would take minutes, so
the commands are started by a launcher that imports the harness once and forks a child per
command (``tests/hostile/launcher.py``; ``HOSTILE_INPUTS_SUBPROCESS=1`` runs each as a plain
subprocess instead). The cases are data in ``tests/hostile/catalogue.py``, their helpers in
``tests/hostile/cases.py`` and the hostile trees in ``tests/hostile/data.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.hostile.cases import (
    ABSENT,
    IMG,
    REF_RUN,
    SAME,
    Case,
    Ctx,
    Prepared,
    T,
    _cuda,  # noqa: F401  (c37's skipif condition is evaluated in this module)
    bmssl,
    message_line,
    ok_run,
    table1,
)
from tests.hostile.catalogue import CASES
from tests.hostile.data import build_hostile_data, mount_tmpfs, snapshot
from tests.hostile.launcher import Launcher
from tests.message_fixes import unrunnable_fixes


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    runner = Launcher(
        tmp_path_factory.mktemp("launcher"), os.environ.get("HOSTILE_INPUTS_SUBPROCESS") == "1"
    )
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "d"
    build_hostile_data(d)
    return d


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full (unbuffered: nothing left to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def mounts(tmp_path_factory):
    """``{"small": ..., "rofs": ..., "full": ...}``: each a tmpfs path, or None when mounting is
    not permitted here; "full" has not a byte left."""
    base = tmp_path_factory.mktemp("mounts")
    made = {}
    for name, options in (("small", "size=1m"), ("rofs", "ro,size=1m"), ("full", "size=256k")):
        made[name] = base / name if mount_tmpfs(base / name, options) else None
    if made["full"] is not None:  # not a byte left: a new run or export fails on its first write
        fill(made["full"] / "filler")
    yield made
    for path in made.values():
        if path is not None:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def ref_run(launch, tmp_path_factory) -> Prepared:
    """r01: a finished tiny BMSSL run on digits (its checkpoint feeds the eval and resume cases)."""
    base = tmp_path_factory.mktemp("ref")
    result = launch(bmssl("train --out", str(base / "ref"), REF_RUN), base)
    return Prepared(result, base / "ref")


@pytest.fixture(scope="session")
def oneimg_run(launch, data, tmp_path_factory) -> Prepared:
    """c26: a run on a tree whose test split holds a one-image class (c31 evaluates it)."""
    base = tmp_path_factory.mktemp("oneimg")
    command = f"train --quiet --out {base / 'c26'} {T} {IMG} dataset=imagefolder:{data}/oneimg"
    return Prepared(launch(bmssl(command), base), base / "c26")


@pytest.fixture(scope="session")
def table_run(launch, data, tmp_path_factory) -> Prepared:
    """A finished tiny table1 run (random, simclr on digits 5w1s, one seed), for t12, t14, t15."""
    base = tmp_path_factory.mktemp("table")
    command = f"--config {data}/tiny.yaml --out {base / 'res'} --quiet"
    return Prepared(launch(table1(command), base), base / "res")


@pytest.fixture(scope="session")
def full_disk_run(launch, mounts) -> Prepared:
    """f01: a run on a small tmpfs, which is then filled but for 32 KB: room for the small files
    of a resumed run, not for its next checkpoint (~65 KB), so f02 fills the disk while saving."""
    disk = mounts["small"]
    if disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    result = launch(bmssl("train --out", str(disk / "run"), REF_RUN), disk)
    if result.rc == 0:
        stat = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 32 * 1024))
    return Prepared(result, disk / "run")


def _param(case: Case):
    marks = list(case.marks)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


_REPORT: list[dict] = []


@pytest.fixture(scope="session", autouse=True)
def _report():
    """With ``HOSTILE_INPUTS_REPORT=FILE``, what every case printed is written to FILE (JSON)."""
    yield
    if os.environ.get("HOSTILE_INPUTS_REPORT"):
        Path(os.environ["HOSTILE_INPUTS_REPORT"]).write_text(json.dumps(_REPORT, indent=1))


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, launch, data, tmp_path, request):
    x = Ctx(d=data, o=tmp_path / "o" / case.id, tmp=tmp_path)
    if case.prepare is not None:
        case.prepare(x, request)
    if case.setup:  # run once per session by its fixture, since later cases build on it
        ran = request.getfixturevalue(case.setup)
        x.o = ran.path
        _REPORT.append({"id": case.id, "what": case.what, "argv": case.argv(x), "rc": ran.result.rc,
                        "err": ran.result.err, "out_exists": True, "same": None})  # fmt: skip
        ok_run(x, ran.result)
        return
    before = snapshot(x.watch) if case.out == SAME else None
    argv = case.argv(x)
    result = launch(argv, tmp_path)
    _REPORT.append(
        {"id": case.id, "what": case.what, "argv": argv, "rc": result.rc, "err": result.err,
         "out_exists": x.o.exists(), "same": None if before is None else snapshot(x.watch) == before}
    )  # fmt: skip
    assert "Traceback" not in result.err, result.err
    assert result.rc == case.rc, f"exit {result.rc}, expected {case.rc}:\n{result.err}"
    if case.rc == 2:
        line = message_line(result)
        for name in case.names:
            wanted = name.replace("{o}", str(x.o))
            assert wanted in line, f"the message does not name {wanted!r}: {line}"
        unrunnable = unrunnable_fixes(argv, line)  # issue 23, item 6
        assert unrunnable == list(case.fixes_elsewhere), (
            f"the message suggests what the command does not take: {unrunnable}: {line}"
        )
    if case.out == ABSENT:
        assert not x.o.exists(), f"--out was created: {sorted(snapshot(x.o))}"
    elif case.out == SAME:
        assert snapshot(x.watch) == before, f"{x.watch} changed"
    if case.check is not None:
        case.check(x, result)
