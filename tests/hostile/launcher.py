"""Running the harness's command lines in processes of their own, fast: a launcher process
imports the harness once and then ``fork``s one child per command, which redirects its output to
files and runs the entry point exactly as ``python -m MODULE`` / ``python SCRIPT`` would
(``runpy``; uncaught exceptions printed by the interpreter; the exit status is the child's).
``HOSTILE_INPUTS_SUBPROCESS=1`` runs every command as a plain ``subprocess`` instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds for any one command

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
