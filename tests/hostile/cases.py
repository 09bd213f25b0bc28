"""The machinery of the hostile-input cases: what a case is, the command builders, and the
``prepare``/``check`` helpers the cases share."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hostile.data import copy_run
from tests.hostile.launcher import ROOT, Result

# The review's tiny settings ($T, $S, $B) in today's option names.
T = "steps=3 eval_every=3 eval_episodes=5 width=8 task_images=8 proj_hidden=16 proj_dim=8 device=cpu"
S = "eval_episodes=5 width=8 task_images=8 proj_hidden=16 proj_dim=8 device=cpu"
B = (
    "pretext.steps=2 pretext.batch_size=16 pretext.eval_episodes=5 warmup.steps=2 "
    "bilevel.alternations=2 bilevel.lower_steps=1 bilevel.upper_steps=1 finetune.steps=2 "
    "eval_every=2 pretext.width=8 pretext.proj_hidden=16 pretext.proj_dim=8 bilevel.batch_size=16 "
    "bilevel.lower_batch_size=16 finetune.batch_size=16 cg.iters=2 device=cpu"
)
IMG = "eval_n_way=2 eval_k_shot=1"  # few-shot validation the small image trees can hold
TUNE = "--config tiny --num-cpus 2 --quiet"

# ------------------------------------------------------------------------- prerequisite runs


def bmssl(*words: str) -> list[str]:
    return ["-m", "bmssl", *" ".join(words).split()]


def bissl(*words: str) -> list[str]:
    return ["-m", "bissl", *" ".join(words).split()]


def table1(*words: str) -> list[str]:
    return [str(ROOT / "reproduce" / "table1.py"), *" ".join(words).split()]


def tuning(*words: str) -> list[str]:
    return ["-m", "tuning", *" ".join(words).split()]


@dataclass
class Prepared:
    """A setup run: its command's result and the folder it made."""

    result: Result
    path: Path


REF_RUN = f"--quiet {S} steps=2 eval_every=2 dataset=digits"


def ref_with(*changes: str) -> str:
    """REF_RUN with ``key=value`` changes in place of its own values (a key given twice is an
    error since issue 23)."""
    keys = {change.split("=", 1)[0] for change in changes}
    kept = [token for token in REF_RUN.split() if token.split("=", 1)[0] not in keys]
    return " ".join([*kept, *changes])


# --------------------------------------------------------------------------------- the cases

ABSENT, SAME, ANY = "absent", "same", "any"


@dataclass
class Case:
    """One review case.

    ``argv`` is a function of the case context ``x`` (``x.d`` the data, ``x.o`` this case's
    ``--out``, ``x.tmp``, and what ``prepare`` put in ``x.extra``). ``names``: substrings the
    one-line message must hold. ``out``: ``absent`` (``x.o`` must not exist afterwards), ``same``
    (``x.watch`` byte-identical before/after) or ``any``. ``check``: further assertions.
    """

    id: str
    what: str
    argv: Callable[[Ctx], list[str]]
    rc: int = 2
    names: tuple[str, ...] = ()
    out: str = ABSENT
    prepare: Callable[[Ctx, pytest.FixtureRequest], None] | None = None
    check: Callable[[Ctx, Result], None] | None = None
    xfail: str = ""
    #: fixes the message suggests that its command does not take, from files this round could
    #: not change (each as tests.message_fixes words it); a fixed message fails the case
    fixes_elsewhere: tuple[str, ...] = ()
    marks: tuple = ()
    setup: str = ""  # a setup run: the session fixture of that name ran the command


@dataclass
class Ctx:
    d: Path
    o: Path
    tmp: Path
    extra: dict = field(default_factory=dict)
    watch: Path | None = None


def train(words: str) -> Callable[[Ctx], list[str]]:
    return lambda x: bmssl(words.format(x=x, T=T, S=S, IMG=IMG))


def use_ref(x: Ctx, request: pytest.FixtureRequest) -> None:
    ref = request.getfixturevalue("ref_run")
    assert ref.result.rc == 0, ref.result.err
    x.extra["ref"] = ref.path
    x.watch = ref.path  # eval must not write a report into the run when it refuses


def damaged_copy(damage: Callable[[Path], None]) -> Callable[[Ctx, pytest.FixtureRequest], None]:
    """A copy of the reference run whose ``last.pt`` ``damage`` spoils; watched byte-for-byte."""

    def prepare(x: Ctx, request: pytest.FixtureRequest) -> None:
        ref = request.getfixturevalue("ref_run")
        assert ref.result.rc == 0, ref.result.err
        run = copy_run(ref.path, x.tmp / "run")
        damage(run / "checkpoints" / "last.pt")
        x.extra["run"] = run
        x.watch = run

    return prepare


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    path.write_text("this is not a checkpoint\n" * 20)


class Foreign:
    """A class only a full unpickle can rebuild: a checkpoint holding it must be refused."""


def foreign(path: Path) -> None:
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["extra"] = Foreign()
    torch.save(saved, path)


def no_checkpoint(x: Ctx, result: Result) -> None:
    assert not (x.o / "checkpoints" / "last.pt").exists(), "a checkpoint of a diverged run"


def ok_run(x: Ctx, result: Result) -> None:
    assert result.rc == 0, result.err
    assert (x.o / "checkpoints" / "last.pt").is_file()
    assert "Traceback" not in result.err


def use_oneimg(x: Ctx, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue("oneimg_run")
    assert run.result.rc == 0, run.result.err
    x.extra["run"] = run.path
    x.watch = run.path


def use_mount(name: str) -> Callable[[Ctx, pytest.FixtureRequest], None]:
    def prepare(x: Ctx, request: pytest.FixtureRequest) -> None:
        path = request.getfixturevalue("mounts")[name]
        if path is None:
            pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
        x.o = path / "run"

    return prepare


def use_full_disk(x: Ctx, request: pytest.FixtureRequest) -> None:
    first = request.getfixturevalue("full_disk_run")
    assert first.result.rc == 0, f"f01 (setup) failed: {first.result.err}"
    x.o = first.path
    x.extra["last"] = (first.path / "checkpoints" / "last.pt").read_bytes()


def check_full_disk(x: Ctx, result: Result) -> None:
    import torch

    last = x.o / "checkpoints" / "last.pt"
    assert last.read_bytes() == x.extra["last"], "the old last.pt changed"
    assert torch.load(last, map_location="cpu", weights_only=True)["step"] == 2
    leftovers = [p.name for p in x.o.rglob("*") if p.name.startswith((".tmp", "tmp"))]
    assert not leftovers, f"temporary files left: {leftovers}"


def use_table(x: Ctx, request: pytest.FixtureRequest) -> Path:
    table = request.getfixturevalue("table_run")
    assert table.result.rc == 0, f"table1 setup run failed: {table.result.err}"
    return copy_run(table.path, x.tmp / "res")


def table_corrupt_cell(x: Ctx, request: pytest.FixtureRequest) -> None:
    res = use_table(x, request)
    cell = next((res / "tiny" / "cells").glob("simclr__digits__seed0*.json"))
    cell.write_text('{"mean": 12.3, "trunc')
    x.extra.update(res=res, cell=cell)


def check_cell_recomputed(x: Ctx, result: Result) -> None:
    assert "| SimCLR |" in result.out
    json.loads(x.extra["cell"].read_text())  # rewritten whole


def forget_export(run: Path) -> None:
    """Remove a finished model's exported backbone (``backbone.pt``, ``model.json``), which a
    table would otherwise reload without touching the run's checkpoint or lock."""
    for name in ("backbone.pt", "model.json"):
        (run / name).unlink(missing_ok=True)


def table_truncated_model(x: Ctx, request: pytest.FixtureRequest) -> None:
    res = use_table(x, request)
    for cell in (res / "tiny" / "cells").glob("simclr__digits__seed0*.json"):
        cell.unlink()  # the model is needed again
    run = res / "tiny" / "runs" / "simclr" / "digits" / "seed0"
    forget_export(run)  # and must come from its checkpoint
    truncate(run / "checkpoints" / "last.pt")
    x.extra["res"] = res
    x.watch = res


def table_locked(x: Ctx, request: pytest.FixtureRequest) -> None:
    """t12: another process (this one, as a first table1 run would) holds the SimCLR run folder
    of the table while the second needs it (its cell is missing)."""
    from bmssl.runlock import RunLock

    res = use_table(x, request)
    for cell in (res / "tiny" / "cells").glob("simclr__digits__seed0*.json"):
        cell.unlink()
    forget_export(res / "tiny" / "runs" / "simclr" / "digits" / "seed0")
    lock = RunLock(res / "tiny" / "runs" / "simclr" / "digits" / "seed0", what="simclr run")
    lock.acquire()
    release = threading.Timer(20.0, lock.release)  # should the second process wait instead
    release.start()
    x.extra.update(res=res, lock=lock, release=release, started=time.monotonic())


def check_locked(x: Ctx, result: Result) -> None:
    x.extra["release"].cancel()
    if x.extra["lock"].locked:
        x.extra["lock"].release()
    if result.rc == 0:  # it waited for the holder: allowed ("the second waits or exits 2")
        assert time.monotonic() - x.extra["started"] >= 19, "trained while the folder was locked"
        return
    assert result.rc == 2, result.err
    assert str(os.getpid()) in result.lines()[-1]


def tune_existing(resume_spec: bool) -> Callable[[Ctx, pytest.FixtureRequest], None]:
    """r11/r12: ``x.o/bmssl-bmssl-delta`` holds a search, built without running Ray (seconds of
    start-up on this box): Tune's ``tuner.pkl`` (what ``Tuner.can_restore`` looks for) and, for
    r12, the spec the harness wrote for a search started with ``--num-samples 1``."""

    def prepare(x: Ctx, request: pytest.FixtureRequest) -> None:
        search = x.o / "bmssl-bmssl-delta"
        search.mkdir(parents=True)
        (search / "tuner.pkl").write_bytes(b"")
        if resume_spec:
            try:
                from tuning.plan import SearchRequest, make_plan
                from tuning.search import SPEC_FILE

                plan = make_plan(
                    SearchRequest(method="bmssl", space="bmssl-delta", config="tiny", num_samples=1)
                )
            except Exception as err:  # tuning/ may be changing under another engineer's hands
                pytest.skip(f"cannot build a search spec with tuning.plan: {err!r}")
            (search / SPEC_FILE).write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        x.watch = x.o

    return prepare


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def message_line(result: Result) -> str:
    """The one line of error: stderr must hold exactly one (argparse: its usage, then one).

    ``resuming from <last.pt>``, the notice a resumed run prints before it goes on, is no part of
    the error and is left aside.
    """
    lines = [line for line in result.lines() if not line.startswith("resuming from ")]
    assert lines, "nothing on stderr"
    if lines[0].startswith("usage:"):  # argparse: the usage block, then "prog: error: ..."
        errors = [i for i, line in enumerate(lines) if ": error: " in line]
        assert errors == [len(lines) - 1], f"not one error line after the usage:\n{result.err}"
        return lines[-1]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.err}"
    return lines[0]


# -- round 3 (issue 23) ------------------------------------------------------------------------


class _Marker:
    """Unpickling it writes ``path``: the review's crafted ``tuner.pkl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def crafted_search(x: Ctx, request: pytest.FixtureRequest) -> None:
    """r14: ``x.o/bmssl-bmssl-delta`` as someone else could share it: this command's spec and a
    ``tuner.pkl`` that runs code when unpickled; nothing of it may run, nothing may change."""
    import pickle

    tune_existing(True)(x, request)
    x.extra["marker"] = x.tmp / "marker"
    (x.o / "bmssl-bmssl-delta" / "tuner.pkl").write_bytes(pickle.dumps(_Marker(x.extra["marker"])))


def check_no_marker(x: Ctx, result: Result) -> None:
    assert not x.extra["marker"].exists(), "the shared folder's pickle ran"


def nothing_in_cwd(x: Ctx, result: Result) -> None:
    """An empty ``--out`` must not have trained into the working directory (``x.tmp``)."""
    made = sorted(p.name for p in x.tmp.iterdir() if p.name not in ("o",))
    assert not {"checkpoints", "config.yaml", "metrics.csv"} & set(made), made


def check_full(x: Ctx, result: Result) -> None:
    """On the full tmpfs (``x.o`` is ``<disk>/new/run``) only what the fixture put there remains."""
    assert sorted(p.name for p in x.o.parents[1].iterdir()) == ["filler"]


def use_full(x: Ctx, request: pytest.FixtureRequest) -> None:
    disk = request.getfixturevalue("mounts").get("full")
    if disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    x.o = disk / "new" / "run"


def use_ref_full(x: Ctx, request: pytest.FixtureRequest) -> None:
    use_ref(x, request)
    use_full(x, request)
