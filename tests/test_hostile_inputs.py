"""Every case of the hostile-input review (``shared/reviews/reliability.md``, issue 15) as a test.

Each case runs one command line of the harness (``python -m bmssl``, ``python -m bissl``,
``python reproduce/table1.py``, ``python -m tuning``) in a process of its own and checks what a
user would see: the exit code (2 for a user error, 0 where the case must now succeed), no
``Traceback`` on stderr, ONE line of error naming the bad value or file, and an untouched
``--out`` (not created, or for a refused resume left byte-identical). Case ids are the review's
(``c01``, ``b01``, ``y05``, ``f03``, ``t04``, ``r03``, ...); an id with a letter suffix is a
variant the review did not run (``c15u`` a checkpoint that needs full unpickling, ``c29b`` a
damaged saved dataset, ``c40m`` a bare word after the method, ``b04k`` the removed ``preset=``,
``t04k`` ``episodes=abc`` on the command line, ``t09s`` ``--seeds 0``). A case the harness does
not pass yet is a strict xfail saying what is wrong. The hostile images of c24 (16-bit, RGBA,
palette, 1-bit, CMYK) are also checked pixel by pixel through ``bmssl.data.get_dataset``.

Left out, because other tests already run them:
- r02 (resume after SIGKILL, identical weights): tests/bmssl/test_pretrainers.py
  ``test_killed_process_resumes_to_the_same_weights``;
- t10, t11 (table1 Ctrl-C: exit 130, then a rerun finishes): tests/reproduce/test_table1.py
  ``test_ctrl_c_stops_the_workers_and_a_rerun_finishes``;
- r10, r13 (Ray Tune SIGINT: exit 130, ``--resume`` finishes): tests/tuning/test_search.py
  (SIGKILL then SIGINT of a search, each resumed).

Speed: importing torch costs seconds on the shared 2-core box, ~80 cases would take minutes. So by
default the commands are started by a launcher process that imports the harness once and then
``fork``s one child per command; the child redirects its stdout/stderr to files and runs the entry
point exactly as ``python -m MODULE`` / ``python SCRIPT`` would (``runpy``, uncaught exceptions
printed by the interpreter, the exit status is the child's). ``HOSTILE_INPUTS_SUBPROCESS=1`` runs
every command as a plain ``subprocess`` of a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for any one command

# The review's tiny settings ($T, $S, $B) in today's option names.
T = "steps=3 eval_every=3 eval_episodes=5 width=8 n_way=8 proj_hidden=16 proj_dim=8 device=cpu"
S = "eval_episodes=5 width=8 n_way=8 proj_hidden=16 proj_dim=8 device=cpu"
B = (
    "pretext.steps=2 pretext.batch_size=16 pretext.eval_episodes=5 warmup.steps=2 "
    "bilevel.alternations=2 bilevel.lower_steps=1 bilevel.upper_steps=1 finetune.steps=2 "
    "eval_every=2 pretext.width=8 pretext.proj_hidden=16 pretext.proj_dim=8 bilevel.batch_size=16 "
    "bilevel.lower_batch_size=16 finetune.batch_size=16 cg.iters=2 device=cpu"
)
IMG = "eval_n_way=2 eval_k_shot=1"  # few-shot validation the small image trees can hold
TUNE = "--config tiny --num-cpus 2 --quiet"

TABLE_PROFILE = """
profile: tiny
episodes: 20
n_query: 5
classifier: proto
seeds: [0]
reference: simclr
jobs: 1
threads: 1
methods: [random, simclr]
model: {backbone: conv4, width: 8, proj_hidden: 16, proj_dim: 8}
datasets:
  digits: {image_size: 28, cells: [5w1s]}
method_overrides:
  simclr: {steps: 3, eval_every: 3, eval_episodes: 5, batch_size: 16}
"""


# ------------------------------------------------------------------------------------ launcher

_LAUNCHER = r"""
import json, os, runpy, sys

for _name in sys.argv[1:]:
    try:
        __import__(_name)
    except Exception:  # a module another engineer is changing: the child imports it itself
        pass
sys.stdout.write("ready\n")
sys.stdout.flush()


def _serve():
    while True:
        line = sys.stdin.readline()
        if not line:
            raise SystemExit(0)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


_request = _serve()
os.setpgid(0, 0)
os.chdir(_request["cwd"])
os.environ.update(_request["env"])
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
os.dup2(os.open(_request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
os.dup2(os.open(_request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
sys.stdin = open(os.devnull)
sys.orig_argv = [sys.executable, *_request["argv"]]
_module = _request["argv"][0] == "-m"
sys.argv = list(_request["argv"][1:] if _module else _request["argv"])
sys.path[0] = _request["cwd"] if _module else os.path.dirname(os.path.abspath(sys.argv[0]))
del _request
_code = 0
try:
    if _module:
        runpy._run_module_as_main(sys.argv[0])
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as _exit:  # what the interpreter does with it
    if _exit.code is None:
        _code = 0
    elif isinstance(_exit.code, int):
        _code = _exit.code
    else:
        print(_exit.code, file=sys.stderr)
        _code = 1
except BaseException:  # uncaught: the interpreter prints the traceback and exits 1
    sys.excepthook(*sys.exc_info())
    _code = 1
# The interpreter's shutdown, less tearing down every module (a second with torch loaded).
import atexit, threading
threading._shutdown()
atexit._run_exitfuncs()
for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.flush()
    except Exception:
        pass
os._exit(_code)
"""
# Imported once by the launcher. No ``*.__main__``: runpy warns when the module it runs is
# already imported.
_PRELOAD = [
    "numpy", "torch", "torchvision.transforms.v2", "PIL.Image", "yaml", "bmssl.cli",
    "bmssl.methods", "bmssl.meta", "bmssl.simclr", "bmssl.protonet", "bmssl.trainer",
    "bmssl.evaluate", "bmssl.data.folders", "bmssl.data.offline", "bissl.pipeline",
    "reproduce.profiles",
]  # fmt: skip
_ENV = {
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Launcher:
    """Runs ``python ARGV...`` in a fresh process: a fork of a warm interpreter, or a subprocess."""

    def __init__(self, workdir: Path, plain: bool) -> None:
        self.workdir = workdir
        self.plain = plain
        self.count = 0
        self.server: subprocess.Popen | None = None
        if not plain:
            script = workdir / "launcher.py"
            script.write_text(_LAUNCHER)
            self.server = subprocess.Popen(
                [sys.executable, str(script), *_PRELOAD],
                cwd=workdir, env={**os.environ, **_ENV}, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, bufsize=1,
            )  # fmt: skip
            assert self._read(TIMEOUT) == "ready"

    def _read(self, timeout: float) -> str | None:
        assert self.server is not None and self.server.stdout is not None
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        return self.server.stdout.readline().strip() if ready else None

    def __call__(self, argv: list[str], cwd: Path, timeout: float = TIMEOUT) -> Result:
        self.count += 1
        stdout = self.workdir / f"{self.count}.out"
        stderr = self.workdir / f"{self.count}.err"
        cwd.mkdir(parents=True, exist_ok=True)
        if self.plain:
            proc = subprocess.run(
                [sys.executable, *argv], cwd=cwd, env={**os.environ, **_ENV},
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            return Result(proc.returncode, proc.stdout, proc.stderr)
        assert self.server is not None and self.server.stdin is not None
        request = {"argv": argv, "cwd": str(cwd), "env": _ENV, "stdout": str(stdout)}
        self.server.stdin.write(json.dumps({**request, "stderr": str(stderr)}) + "\n")
        pid = json.loads(self._read(30) or "{}")["pid"]
        reply = self._read(timeout)
        if reply is None:  # the command hangs: end its process group (it made it), then fail
            os.killpg(pid, signal.SIGKILL)
            self._read(30)
            raise AssertionError(f"timed out after {timeout} s: python {' '.join(argv)}")
        return Result(json.loads(reply)["rc"], stdout.read_text(), stderr.read_text())

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait(timeout=30)


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    runner = Launcher(
        tmp_path_factory.mktemp("launcher"), os.environ.get("HOSTILE_INPUTS_SUBPROCESS") == "1"
    )
    yield runner
    runner.close()


# ------------------------------------------------------------------------------ hostile data

MODES = ("RGB", "L", "RGBA", "I;16", "P", "1", "CMYK")


def mode_image(mode: str, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random image of PIL ``mode`` (``w`` x ``h``)."""
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    bands = {"L": 1, "RGB": 3, "P": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(pixels[..., 0])
    if mode == "P":
        return Image.fromarray(pixels).quantize(16)
    return Image.fromarray(pixels, mode)


def save_mode_image(folder: Path, stem: str, img: Image.Image) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.{'tif' if img.mode == 'CMYK' else 'png'}"  # PNG holds no CMYK
    img.save(path)
    return path


def plain_tree(root: Path, classes: list[str], per_class: int, size: int = 12) -> None:
    rng = np.random.default_rng(len(classes) * 1000 + per_class)
    for name in classes:
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            save_mode_image(root / name, f"{name}_{i:03d}", img)


def names(n: int) -> list[str]:
    return [f"class{c:02d}" for c in range(n)]


def build_hostile_data(d: Path) -> None:
    """The review's ``<tmp>/d``: every tree and file the cases point at."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(names(10)):  # mixed: 10 classes x 20 images, random sizes and modes
        for i in range(20):
            w, h = (int(v) for v in rng.integers(8, 65, 2))
            save_mode_image(
                d / "mixed" / name, f"{i:03d}", mode_image(MODES[(c + i) % 7], rng, w, h)
            )
    plain_tree(d / "corrupt", names(10), 20)
    truncated = d / "corrupt" / "class00" / "class00_000.png"  # train class: read by training
    truncated.write_bytes(truncated.read_bytes()[:60])
    garbage = d / "corrupt" / "class06" / "class06_000.png"  # val class: read by validation
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    plain_tree(d / "oneimg", names(9), 20)  # + class09 with one image: the test split holds it
    plain_tree(d / "oneimg", ["class09"], 1)
    plain_tree(d / "_real", names(10), 20)  # symlinked: class folders are links, one dangles
    (d / "symlinked").mkdir()
    for name in names(10):
        (d / "symlinked" / name).symlink_to(d / "_real" / name, target_is_directory=True)
    (d / "symlinked" / "class10").symlink_to(d / "nowhere", target_is_directory=True)
    for split in ("train", "val", "test"):  # splitshare: the same 8 classes in every split
        plain_tree(d / "splitshare" / split, names(8), 20 if split == "train" else 6)
    (d / "nothf").mkdir()
    (d / "nothf" / "dataset_info.json").write_text('{"bogus": tru')
    (d / "badhf").mkdir()  # looks like a save_to_disk folder, but its files are damaged
    (d / "badhf" / "dataset_info.json").write_text("{}")
    (d / "badhf" / "state.json").write_text("not json at all")
    (d / "empty").mkdir()
    (d / "afile.txt").write_text("a file where a folder is expected\n")
    for where in ("nonimg/notes.txt", "nonimg/cls/a.txt", "nonimg/cls/b.csv"):
        (d / where).parent.mkdir(parents=True, exist_ok=True)
        (d / where).write_text("no image here\n")
    (d / "bad.yaml").write_text("steps: [1, 2\nwidth: {8\n")
    (d / "list.yaml").write_text("- steps\n- 3\n")
    (d / "nested.yaml").write_text("steps: {a: 1}\n")
    (d / "tiny.yaml").write_text(TABLE_PROFILE)
    (d / "tiny_badep.yaml").write_text(TABLE_PROFILE.replace("episodes: 20", "episodes: abc"))
    (d / "tiny_malformed.yaml").write_text(TABLE_PROFILE.replace("[random, simclr]", "[random,"))
    (d / "tiny_badcell.yaml").write_text(TABLE_PROFILE.replace("[5w1s]", "[9w1s]"))
    (d / "tiny_badkey.yaml").write_text(
        TABLE_PROFILE.replace("batch_size: 16}", "batch_size: 16, bogus_key: 1}")
    )


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "d"
    build_hostile_data(d)
    return d


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def mounts(tmp_path_factory):
    """``{"small": path or None, "rofs": path or None}`` (None: mount not permitted here)."""
    base = tmp_path_factory.mktemp("mounts")
    made = {}
    for name, options in (("small", "size=1m"), ("rofs", "ro,size=1m")):
        made[name] = base / name if _mount_tmpfs(base / name, options) else None
    yield made
    for path in made.values():
        if path is not None:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


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


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (paths relative) with its bytes; links by their target."""
    if not folder.exists():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = os.readlink(path).encode()
        elif path.is_file():
            found[str(path.relative_to(folder))] = path.read_bytes()
        else:
            found[str(path.relative_to(folder)) + "/"] = b""
    return found


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


def table_truncated_model(x: Ctx, request: pytest.FixtureRequest) -> None:
    res = use_table(x, request)
    for cell in (res / "tiny" / "cells").glob("simclr__digits__seed0*.json"):
        cell.unlink()  # the model is needed again
    truncate(res / "tiny" / "runs" / "simclr" / "digits" / "seed0" / "checkpoints" / "last.pt")
    x.extra["res"] = res
    x.watch = res


def table_locked(x: Ctx, request: pytest.FixtureRequest) -> None:
    """t12: another process (this one, as a first table1 run would) holds the SimCLR run folder
    of the table while the second needs it (its cell is missing)."""
    from bmssl.runlock import RunLock

    res = use_table(x, request)
    for cell in (res / "tiny" / "cells").glob("simclr__digits__seed0*.json"):
        cell.unlink()
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


CASES = [
    # -- bmssl train: settings
    Case("c01", "unknown dataset", train("train --out {x.o} dataset=nosuch {T}"), names=("nosuch",)),
    Case("c02", "unknown backbone", train("train --out {x.o} backbone=resnet99 {T}"), names=("resnet99",)),
    Case("c03", "steps=abc", train("train --out {x.o} {T} steps=abc"), names=("steps", "abc")),
    Case("c04", "outer_lr=1e-3x", train("train --out {x.o} {T} outer_lr=1e-3x"), names=("outer_lr", "1e-3x")),
    Case("c05", "unknown key", train("train --out {x.o} {T} lrr=0.1"), names=("lrr",)),
    Case("c06", "tau=0", train("train --out {x.o} {T} tau=0"), names=("tau",)),
    Case("c07", "tau=nan", train("train --out {x.o} {T} tau=nan"), names=("tau", "nan")),
    Case("c08", "outer_lr=inf", train("train --quiet --out {x.o} {T} outer_lr=inf"), names=("outer_lr", "inf")),
    # a divergence is only seen while training: the run folder exists, but no checkpoint of it
    Case("c09", "inner_lr=1e30 (huge)", train("train --quiet --out {x.o} {T} inner_lr=1e30"),
         names=("inner_lr", "step"), out=ANY, check=no_checkpoint),
    Case("c10", "tau=inf", train("train --quiet --out {x.o} {T} tau=inf"), names=("tau", "inf")),
    Case("c11", "steps=-5", train("train --quiet --out {x.o} {T} steps=-5"), names=("steps", "-5")),
    Case("c12", "width=0", train("train --quiet --out {x.o} {T} width=0"), names=("width",)),
    Case("c13", "n_way=100000 (tasks larger than the train split)",
         train("train --quiet --out {x.o} {T} n_way=100000"), names=("n_way",)),
    Case("c36", "bootstrap_steps (delta) = -1", train("train --quiet --out {x.o} {T} bootstrap_steps=-1"),
         names=("bootstrap_steps",)),
    Case("c37", "device=cuda on a CPU-only box", train("train --quiet --out {x.o} {T} device=cuda"),
         names=("cuda",), marks=(pytest.mark.skipif("_cuda()", reason="this box has CUDA"),)),
    Case("c38", "image_size=3 (below Conv4's 4 poolings)", train("train --quiet --out {x.o} {T} image_size=3"),
         names=("image_size", "3")),
    Case("c39", "eval_n_way=6 on digits (5 val classes)",
         train("train --quiet --out {x.o} {T} dataset=digits eval_n_way=6"), names=("eval_n_way", "6")),
    Case("c40", "bare token 'steps' (no =)", train("train --quiet --out {x.o} {T} steps"), names=("steps",)),
    Case("c40m", "bare token 'steps' (no =) after the method", train("train bmssl --quiet --out {x.o} {T} steps"),
         names=("steps", "key=value")),
    Case("c41", "steps=2.5 (non-integer float)", train("train --quiet --out {x.o} {T} steps=2.5"),
         names=("steps", "2.5")),
    # -- bmssl: checkpoints, resume and eval
    Case("r01", "reference uninterrupted run (setup of the eval and resume cases)",
         lambda x: bmssl("train --out", str(x.o), REF_RUN), rc=0, out=ANY, setup="ref_run"),
    Case("c14", "resume from truncated last.pt", lambda x: bmssl("train --out", str(x.extra["run"]), REF_RUN, "steps=3"),
         names=("last.pt",), out=SAME, prepare=damaged_copy(truncate)),
    Case("c15", "resume from garbage last.pt (text)",
         lambda x: bmssl("train --out", str(x.extra["run"]), REF_RUN, "steps=3"),
         names=("last.pt",), out=SAME, prepare=damaged_copy(garble)),
    Case("c15u", "resume from a last.pt that needs full unpickling (issue item 7)",
         lambda x: bmssl("train --out", str(x.extra["run"]), REF_RUN, "steps=3"),
         names=("last.pt",), out=SAME, prepare=damaged_copy(foreign)),
    Case("c16", "resume with changed width",
         lambda x: bmssl("train --out", str(x.extra["run"]), REF_RUN, "width=16 steps=3"),
         names=("width",), out=SAME, prepare=damaged_copy(lambda p: None)),
    Case("c17", "eval n_way=10 > 5 held-out digit classes",
         lambda x: bmssl("eval --quiet --checkpoint", str(x.extra["ref"] / "checkpoints/last.pt"), "n_way=10 episodes=5"),
         names=("n_way", "10"), out=SAME, prepare=use_ref),
    Case("c18", "eval k_shot=200 > images per class",
         lambda x: bmssl("eval --quiet --checkpoint", str(x.extra["ref"] / "checkpoints/last.pt"), "k_shot=200 episodes=5"),
         names=("k_shot", "200"), out=SAME, prepare=use_ref),
    Case("c19", "eval episodes=0",
         lambda x: bmssl("eval --quiet --checkpoint", str(x.extra["ref"] / "checkpoints/last.pt"), "episodes=0"),
         names=("episodes", "0"), out=SAME, prepare=use_ref),
    Case("c20", "eval truncated checkpoint",
         lambda x: bmssl("eval --quiet --checkpoint", str(x.extra["run"] / "checkpoints/last.pt"), "episodes=5"),
         names=("last.pt",), out=SAME, prepare=damaged_copy(truncate)),
    Case("c31", "eval on split with a 1-image class (2-way 1-shot)",
         lambda x: bmssl("eval --quiet --out", str(x.extra["run"]), "n_way=2 episodes=5"),
         names=("k_shot", "n_query"), out=SAME, prepare=use_oneimg),
    Case("c32", "eval n_query=0", lambda x: bmssl("eval --quiet --out", str(x.extra["ref"]), "n_query=0 episodes=5"),
         names=("n_query", "0"), out=SAME, prepare=use_ref),
    Case("c33", "eval k_shot=-1", lambda x: bmssl("eval --quiet --out", str(x.extra["ref"]), "k_shot=-1 episodes=5"),
         names=("k_shot", "-1"), out=SAME, prepare=use_ref),
    Case("c34", "eval --out dir without checkpoint", train("eval --quiet --out {x.o} episodes=5"), names=("{o}",)),
    Case("c35", "eval n_way=abc", lambda x: bmssl("eval --quiet --out", str(x.extra["ref"]), "n_way=abc"),
         names=("n_way", "abc"), out=SAME, prepare=use_ref),
    # -- bmssl: hostile image trees
    Case("c21", "imagefolder: empty folder", train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/empty"),
         names=("empty",)),
    Case("c22", "imagefolder: path is a file", train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/afile.txt"),
         names=("afile.txt",)),
    Case("c23", "imagefolder: folder of non-images", train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/nonimg"),
         names=("nonimg",)),
    Case("c24", "imagefolder: mixed sizes and modes (RGB/L/RGBA/I;16/P/1/CMYK)",
         train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/mixed"), rc=0, out=ANY, check=ok_run),
    Case("c25", "imagefolder: corrupted/truncated PNGs",
         train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/corrupt"), names=("_000.png",)),
    Case("c26", "imagefolder: class folder with one image (in test split)",
         train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/oneimg"), rc=0, out=ANY,
         setup="oneimg_run"),
    Case("c27", "imagefolder: symlinked class folders + dangling symlink",
         train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/symlinked"), rc=0, out=ANY, check=ok_run),
    Case("c28", "imagefolder: train/val/test folders sharing classes",
         train("train --quiet --out {x.o} {T} {IMG} dataset=imagefolder:{x.d}/splitshare"), names=("splitshare", "class")),
    Case("c29", "hf: path that is not a saved dataset", train("train --quiet --out {x.o} {T} {IMG} dataset=hf:{x.d}/nothf"),
         names=("nothf",)),
    Case("c29b", "hf: a saved dataset whose state.json is damaged",
         train("train --quiet --out {x.o} {T} {IMG} dataset=hf:{x.d}/badhf"), names=("badhf",)),
    Case("c30", "omniglot with data_root an empty folder",
         train("train --quiet --out {x.o} {T} {IMG} dataset=omniglot data_root={x.d}/empty"), names=("omniglot", "empty")),
    # -- bissl
    Case("b01", "bissl bilevel.lam=nan", lambda x: bissl("run --quiet --out", str(x.o), B, "bilevel.lam=nan"),
         names=("lam", "nan")),
    Case("b02", "bissl bilevel.gamma=nan", lambda x: bissl("run --quiet --out", str(x.o), B, "bilevel.gamma=nan"),
         names=("gamma", "nan")),
    Case("b03", "bissl cg.iters=0", lambda x: bissl("run --quiet --out", str(x.o), B, "cg.iters=0"), names=("iters",)),
    Case("b04", "bissl --config paper-v3 (was preset=paper-v3)",
         lambda x: bissl("run --quiet --config paper-v3 --out", str(x.o), B), names=("paper-v3",)),
    Case("b04k", "bissl preset=paper-v3 (the removed option)",
         lambda x: bissl("run --quiet --out", str(x.o), B, "preset=paper-v3"), names=("preset",)),
    Case("b05", "bissl dataset_options=[1,2]", lambda x: bissl("run --quiet --out", str(x.o), B, "dataset_options=[1,2]"),
         names=("dataset_options",)),
    Case("b06", "bissl baseline bilevel.lam=inf", lambda x: bissl("baseline --quiet --out", str(x.o), B, "bilevel.lam=inf"),
         names=("lam", "inf")),
    Case("b07", "bissl baseline dataset=cifar10 (no root)",
         lambda x: bissl("baseline --quiet --out", str(x.o), B, "dataset=cifar10"), names=("cifar10",)),
    Case("b08", "bissl pretext.dataset=nosuch", lambda x: bissl("run --quiet --out", str(x.o), B, "pretext.dataset=nosuch"),
         names=("nosuch",)),
    # -- --config files
    Case("y01", "--config does not exist", train("train --quiet --out {x.o} --config {x.d}/nope.yaml"), names=("nope.yaml",)),
    Case("y02", "--config malformed YAML", train("train --quiet --out {x.o} --config {x.d}/bad.yaml"), names=("bad.yaml",)),
    Case("y03", "--config YAML is a list", train("train --quiet --out {x.o} --config {x.d}/list.yaml"), names=("list.yaml",)),
    Case("y04", "--config steps: {a: 1} (mapping value)", train("train --quiet --out {x.o} --config {x.d}/nested.yaml"),
         names=("steps",)),
    Case("y05", "--config is a directory", train("train --quiet --out {x.o} --config {x.d}"), names=("folder",)),
    # -- output paths
    Case("f01", "--out on a small tmpfs: first run (checkpoint fits; then the disk is filled)",
         lambda x: bmssl("train --out", str(x.o), REF_RUN), rc=0, out=ANY, setup="full_disk_run"),
    Case("f02", "disk full during checkpoint save (resume of f01 to steps=10)",
         lambda x: bmssl("train --out", str(x.o), REF_RUN, "steps=10"),
         names=("disk full",), out=ANY, prepare=use_full_disk, check=check_full_disk),
    Case("f03", "--out on a read-only filesystem", lambda x: bmssl("train --out", str(x.o), REF_RUN),
         names=("read-only",), prepare=use_mount("rofs")),
    Case("f04", "--out whose parent is a file", lambda x: bmssl("train --out", str(x.d / "afile.txt" / "run"), REF_RUN),
         names=("afile.txt",)),
    # -- table1
    Case("t01", "table1 unknown method",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random,simclr,bogus --datasets digits --out {x.o} --quiet"),
         names=("bogus",)),
    Case("t02", "table1 unknown dataset",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random --reference random --datasets digits,omniglot --out {x.o} --quiet"),
         names=("omniglot",)),
    Case("t03", "table1 episodes=-3",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random --reference random --datasets digits episodes=-3 --out {x.o} --quiet"),
         names=("episodes", "-3")),
    Case("t04", "table1 profile with episodes: abc",
         lambda x: table1(f"--config {x.d}/tiny_badep.yaml --methods random --reference random --datasets digits --out {x.o} --quiet"),
         names=("episodes", "abc")),
    Case("t04k", "table1 override episodes=abc",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random --reference random --datasets digits episodes=abc --out {x.o} --quiet"),
         names=("episodes", "abc")),
    Case("t05", "table1 malformed profile YAML",
         lambda x: table1(f"--config {x.d}/tiny_malformed.yaml --out {x.o} --quiet"), names=("tiny_malformed.yaml",)),
    Case("t06", "table1 cell 9w1s on digits (5 test classes)",
         lambda x: table1(f"--config {x.d}/tiny_badcell.yaml --methods random --reference random --datasets digits --out {x.o} --quiet"),
         names=("9",)),
    Case("t07", "table1 unknown key in method_overrides",
         lambda x: table1(f"--config {x.d}/tiny_badkey.yaml --methods random,simclr --datasets digits --out {x.o} --quiet"),
         names=("bogus_key",)),
    Case("t08", "table1 --config nosuch", lambda x: table1(f"--config nosuch --out {x.o} --quiet"), names=("nosuch",)),
    Case("t09", "table1 --data-root bogus (not NAME=PATH)",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random --reference random --datasets digits --data-root bogus --out {x.o} --quiet"),
         names=("bogus",)),
    Case("t09s", "table1 --seeds 0", lambda x: table1(f"--config {x.d}/tiny.yaml --seeds 0 --out {x.o} --quiet"),
         names=("seeds",)),
    Case("t12", "a second table1 process on a --out whose SimCLR run another process trains",
         lambda x: table1(f"--config {x.d}/tiny.yaml --out {x.extra['res']} --quiet"),
         names=("pid",), out=ANY, prepare=table_locked, check=check_locked),
    Case("t13", "table1 --out whose parent is a file",
         lambda x: table1(f"--config {x.d}/tiny.yaml --methods random --reference random --datasets digits --out {x.d}/afile.txt/res --quiet"),
         names=("afile.txt",)),
    Case("t14", "table1 rerun with a corrupted cached cell JSON",
         lambda x: table1(f"--config {x.d}/tiny.yaml --out {x.extra['res']} --quiet"),
         rc=0, out=ANY, prepare=table_corrupt_cell, check=check_cell_recomputed),
    Case("t15", "table1 rerun with truncated cached model last.pt",
         lambda x: table1(f"--config {x.d}/tiny.yaml --out {x.extra['res']} --quiet"),
         names=("last.pt",), out=SAME, prepare=table_truncated_model),
    # -- tuning (errors found before Ray starts)
    Case("r03", "tuning unknown space", lambda x: tuning(f"search bmssl --space nosuch {TUNE} --out {x.o}"), names=("nosuch",)),
    Case("r04", "tuning space not for method (bmssl-delta on bissl)",
         lambda x: tuning(f"search bissl --space bmssl-delta {TUNE} --out {x.o}"), names=("bmssl-delta",)),
    Case("r05", "tuning --num-samples 0",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} --num-samples 0 --out {x.o}"), names=("num-samples",)),
    Case("r06", "tuning unknown key bogus=1",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} bogus=1 --out {x.o}"), names=("bogus",)),
    Case("r07", "tuning outer_lr=nan",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} outer_lr=nan --out {x.o}"), names=("outer_lr", "nan")),
    Case("r08", "tuning report on a non-search dir", lambda x: tuning(f"report {x.d}/empty"), names=("empty",)),
    Case("r09", "tuning --gpus-per-trial -1",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} --gpus-per-trial -1 --out {x.o}"),
         names=("gpus-per-trial",)),
    Case("r11", "tuning rerun of an existing search without --resume",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} --num-samples 1 --out {x.o}"),
         names=("--resume",), out=SAME, prepare=tune_existing(False)),
    Case("r12", "tuning --resume with changed settings (--num-samples 2)",
         lambda x: tuning(f"search bmssl --space bmssl-delta {TUNE} --num-samples 2 --out {x.o} --resume"),
         names=("num_samples",), out=SAME, prepare=tune_existing(True)),
]  # fmt: skip


def _param(case: Case):
    marks = list(case.marks)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


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
    if case.out == ABSENT:
        assert not x.o.exists(), f"--out was created: {sorted(snapshot(x.o))}"
    elif case.out == SAME:
        assert snapshot(x.watch) == before, f"{x.watch} changed"
    if case.check is not None:
        case.check(x, result)


# ------------------------------------------------------------------ image modes, in process


def path_of(dataset, index: int) -> Path:
    """The file of item ``index`` of a (possibly class-subset) file dataset."""
    while hasattr(dataset, "base"):
        dataset, index = dataset.base, int(dataset.indices[index])
    return dataset.paths[index]


def test_image_modes_are_converted_as_documented(tmp_path):
    """c24: 16-bit images are scaled, not clipped; transparency is composited on white; palette,
    1-bit and CMYK images convert; every mode of the mixed tree loads (README, Data)."""
    import torch

    from bmssl.data import get_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "modes"
    solid = {
        "i16": Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),  # 40000/257 = 155.6
        "rgba_clear": Image.new("RGBA", (8, 8), (10, 20, 30, 0)),  # transparent: white
        "rgba_half": Image.new("RGBA", (8, 8), (255, 0, 0, 128)),  # half red on white: pink
        "pal": Image.new("RGB", (8, 8), (0, 128, 255)).quantize(4),
        "onebit": Image.new("1", (8, 8), 1),
        "cmyk": Image.new("CMYK", (8, 8), (255, 0, 0, 0)),  # pure cyan
    }
    for name, img in solid.items():
        save_mode_image(root / name, "a", img)
        for i, mode in enumerate(MODES):  # a second image per class of each mode
            save_mode_image(root / name, f"b{i}", mode_image(mode, rng, 9 + i, 11))
    full = get_dataset(f"imagefolder:{root}", split="train", protocol="unlabeled", image_size=8)
    pixels = {}
    for i in range(len(full)):
        image, _ = full[i]
        assert image.shape == (3, 8, 8) and torch.isfinite(image).all()
        path = path_of(full, i)
        if path.stem == "a":
            pixels[path.parent.name] = (image[:, 4, 4] * 255).round().tolist()
    assert pixels["i16"] == [156.0] * 3, pixels["i16"]  # clipping would give 255
    assert pixels["rgba_clear"] == [255.0] * 3
    assert pixels["rgba_half"][0] == 255 and 125 <= pixels["rgba_half"][1] <= 129
    assert pixels["rgba_half"][1] == pixels["rgba_half"][2]
    assert pixels["pal"] == [0.0, 128.0, 255.0]
    assert pixels["onebit"] == [255.0] * 3
    assert pixels["cmyk"] == [0.0, 255.0, 255.0]


def test_mixed_tree_loads_every_image(data):
    """c24's tree: every image of every mode and size decodes to a 3-channel tensor in [0, 1]."""
    from bmssl.data import get_dataset

    full = get_dataset(
        f"imagefolder:{data}/mixed", split="train", protocol="unlabeled", image_size=16
    )
    assert len(full) == 200
    modes = set()
    for i in range(len(full)):
        image, _ = full[i]
        assert image.shape == (3, 16, 16) and 0 <= float(image.min()) <= float(image.max()) <= 1
        with Image.open(path_of(full, i)) as img:
            modes.add(img.mode)
    assert {"RGB", "L", "RGBA", "P", "1", "CMYK"} <= modes and modes & {"I;16", "I"}
