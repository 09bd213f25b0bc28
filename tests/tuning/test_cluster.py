"""A real two-node Ray cluster on 127.0.0.1: `ray start --head` and a second `ray start
--address`, each with its own CPU, and a tiny search run through `--address` to completion.

Both nodes share the head's temp dir (Ray allows one per machine). They run in process groups of
their own (``ray start --block``) and are stopped by those groups' ids, not with ``ray stop``:
``ray stop`` ends every Ray process of the machine, other users' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.tuning.helpers import RAY_CHATTER, TINY_BMSSL, as_tokens

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(log: Path, node: subprocess.Popen, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return True
        if node.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def _stop(nodes: list[subprocess.Popen], temp_dir: Path) -> None:
    """End the nodes' process groups (SIGTERM, then SIGKILL), worker node first, and any
    process still naming this test's temp dir (all of them started by this test)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(n.poll() is None for n in nodes):
            time.sleep(0.2)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=5)


@pytest.mark.ray
def test_search_runs_to_completion_on_a_two_node_cluster(tmp_path):
    temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    port = _free_port()
    # A local test cluster: no token authentication (newer Ray enables it by default)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    nodes: list[subprocess.Popen] = []
    try:
        head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
        nodes.append(
            _start_node(
                [
                    "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                    "--include-dashboard=false", "--node-ip-address=127.0.0.1",
                ],
                env,
                head_log,
            )
        )  # fmt: skip
        if not _wait_for(head_log, nodes[0], "Ray runtime started", 60):
            pytest.skip(f"`ray start --head` failed here:\n{head_log.read_text()[-1500:]}")
        nodes.append(
            _start_node(
                [
                    f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                    "--node-ip-address=127.0.0.1",
                ],
                env,
                worker_log,
            )
        )  # fmt: skip
        if not _wait_for(worker_log, nodes[1], "Ray runtime started", 60):
            pytest.skip(f"`ray start --address` failed here:\n{worker_log.read_text()[-1500:]}")
        storage = tmp_path / "store"
        search = subprocess.run(
            [
                sys.executable, "-m", "tuning", "search", "bmssl", "--space", "bmssl-delta",
                "--address", f"127.0.0.1:{port}", "--out", f"file://{storage}", "--quiet",
                "--seeds", "0", "--scheduler", "asha", *as_tokens(TINY_BMSSL),
            ],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        output = search.stdout + search.stderr
        assert search.returncode == 0, output[-3000:]
        assert "5/5 trials finished" in search.stdout
        assert not [c for c in RAY_CHATTER if c in output], output[-3000:]  # --quiet
        spec = json.loads((storage / "bmssl-bmssl-delta" / "tuning_spec.json").read_text())
        assert spec["scheduler"] == "asha"
        assert spec["sessions"][-1]["cluster"] == {"nodes": 2, "cpus": 2.0, "gpus": 0.0}
        assert (storage / "bmssl-bmssl-delta" / "report" / "best_config.yaml").is_file()
    finally:
        _stop(nodes, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
