"""Atomic writes (umask, disk full), weights_only checkpoints with exact RNG restore, weight
export, output-folder checks and the run lock."""

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bmssl.io as bio
from bmssl.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    upgrade_checkpoint,
)
from bmssl.errors import CheckpointError, UnsafeCheckpointError, UserError, cli_entry
from bmssl.io import current_umask, ensure_writable_dir, write_text
from bmssl.runlock import RunLock

REPO = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _tmpfs(directory: Path, options: str):
    """Mount a tmpfs on ``directory`` (root only); skip the test where mounting is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _draws():
    """One draw from each global RNG, the Gaussian caches included."""
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
    )


def _training_state():
    """What trainers store: a state dict, an Adam state, a config dict and metrics history."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return (
        model,
        opt,
        {
            "method": "bmssl",
            "step": 7,
            "history": [{"val_acc": np.float64(0.5), "loss": 1.25, "step": 7.0}],
            "trainer": {
                "encoder": model.state_dict(),
                "optimizer": opt.state_dict(),
                "config": {"width": 8, "tau": 0.2, "dataset_options": {}, "root": Path("/x")},
            },
        },
    )


# -- umask ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_umask(tmp_path, mask, mode):
    with _umask(mask):
        assert current_umask() == mask
        path = write_text(tmp_path / "out.txt", "x")
        assert path.stat().st_mode & 0o777 == mode
        # Also when replacing an existing (differently-moded) file.
        path.chmod(0o600 if mode != 0o600 else 0o644)
        save_checkpoint(path, {"step": 1})
        assert path.stat().st_mode & 0o777 == mode


def test_current_umask_without_proc(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError(errno.ENOENT, "no /proc")

    monkeypatch.setattr(bio, "open", no_proc, raising=False)
    with _umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027  # and it was restored, not left at 0o077


# -- atomic write and disk full -----------------------------------------------------------------


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_disk_full_mocked_keeps_old_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"method": "m", "step": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bio.os, "fsync", full)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"method": "m", "step": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    monkeypatch.undo()
    assert load_checkpoint(path, restore_rng=False)["step"] == 1
    assert _only(tmp_path) == ["last.pt"]


def test_disk_full_on_real_tmpfs(tmp_path, capsys):
    with _tmpfs(tmp_path / "small", "size=100k") as small:
        path = small / "run" / "last.pt"
        save_checkpoint(path, {"method": "m", "step": 1, "w": torch.zeros(100)})
        # torch.save reports ENOSPC as a RuntimeError; atomic_write surfaces the OSError.
        with pytest.raises(OSError) as info:
            save_checkpoint(path, {"method": "m", "step": 2, "w": torch.zeros(100_000)})
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
        assert load_checkpoint(path, restore_rng=False)["step"] == 1
        assert _only(path.parent) == ["last.pt"]

        @cli_entry
        def main():
            save_checkpoint(path, {"w": torch.zeros(100_000)})

        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: disk full while writing {str(path)!r} (No space left on device); "
            f"free space or choose another --out\n"
        )


def test_read_only_and_not_a_directory(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        write_text(afile / "run" / "x.txt", "y")
    assert str(afile) in str(info.value.filename)
    with _tmpfs(tmp_path / "ro", "ro,size=16k") as ro:
        with pytest.raises(OSError) as info:
            write_text(ro / "x.txt", "y")
        assert info.value.errno == errno.EROFS and info.value.filename == str(ro / "x.txt")


# -- ensure_writable_dir ------------------------------------------------------------------------


def test_ensure_writable_dir(tmp_path):
    made = ensure_writable_dir(tmp_path / "a" / "b")
    assert made.is_dir() and _only(made) == []  # the probe file is gone
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(UserError, match=r"--out '.*afile.txt' is a file, not a folder"):
        ensure_writable_dir(afile)
    with pytest.raises(UserError, match=r"a parent of '.*afile.txt.*' is a file"):
        ensure_writable_dir(afile / "run", option="--storage")
    with pytest.raises(UserError, match="choose another --storage"):
        ensure_writable_dir(afile / "run", option="--storage")


def test_ensure_writable_dir_disk_full_mocked(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bio.os, "write", full)
    with pytest.raises(UserError) as info:
        ensure_writable_dir(tmp_path / "run")
    monkeypatch.undo()
    assert str(info.value) == (
        f"disk full while writing {str(tmp_path / 'run')!r} (No space left on device); "
        f"free space or choose another --out"
    )
    assert _only(tmp_path / "run") == []


def test_ensure_writable_dir_read_only_fs(tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=16k") as ro:
        for target in (ro, ro / "run"):
            with pytest.raises(UserError, match=r"cannot write '.*ro.*': read-only file system"):
                ensure_writable_dir(target)


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip_weights_only_and_exact_rng(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave python's and numpy's Gaussian caches full
    np.random.randn()
    model, opt, state = _training_state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    expected = _draws()

    for _ in range(3):  # move every RNG on
        _draws()
    loaded = load_checkpoint(path, expect_keys=("method", "step"))
    assert _draws() == expected

    raw = torch.load(path, weights_only=True)  # readable by anyone without unpickling code
    assert raw["step"] == 7 and raw["history"][0]["val_acc"] == 0.5
    assert type(loaded["history"][0]["val_acc"]) is float
    assert loaded["trainer"]["config"]["root"] == "/x"
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model2.load_state_dict(loaded["trainer"]["encoder"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["trainer"]["optimizer"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]

    before = _draws()
    load_checkpoint(path, restore_rng=False)
    assert _draws() != before  # not restored


def test_rng_state_in_memory_and_legacy_tuples():
    snapshot = rng_state()
    first = _draws()
    set_rng_state(snapshot)
    assert _draws() == first
    legacy = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    first = _draws()
    set_rng_state(legacy)
    assert _draws() == first


class Unsafe:
    """Stands for any class a checkpoint may not hold."""


def test_save_checkpoint_refuses_what_cannot_be_loaded_safely(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match=r"state\['trainer'\]\['x'\].*Unsafe.*weights_only"):
        save_checkpoint(path, {"step": 1, "trainer": {"x": Unsafe()}})
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(path, {"step": 1, "a": np.zeros(2)})
    assert not path.exists()


def _assert_one_line(err: BaseException, path: Path) -> str:
    message = str(err)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"hello, this is not a checkpoint\n", "truncated or corrupt"),
        (bytes(range(256)) * 4, "truncated or corrupt"),
        ("half", "truncated or corrupt"),  # torch says OSError EINVAL here
        ("sixty", "truncated or corrupt"),
    ],
)
def test_bad_checkpoint_files_raise_checkpoint_error(tmp_path, content, reason):
    path = tmp_path / "last.pt"
    if isinstance(content, str):
        save_checkpoint(path, {"method": "m", "step": 1, "w": torch.zeros(1000)})
        data = path.read_bytes()
        content = data[: len(data) // 2] if content == "half" else data[:60]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = _assert_one_line(info.value, path)
    assert reason in message and "delete it to start over, or use another --out" in message
    assert isinstance(info.value, UserError)


def test_foreign_checkpoints(tmp_path):
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="holds a list, not a training checkpoint"):
        load_checkpoint(listed)
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert "w" in load_checkpoint(plain)  # without expect_keys any dict is accepted
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(plain, expect_keys=("method", "step"))
    assert "no 'method', 'step' entry" in _assert_one_line(info.value, plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


class _RunsCode:
    """Unpickling this would create a marker file: the kind of payload weights_only blocks."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "sent.pt"
    torch.save({"method": "bmssl", "step": 1, "x": _RunsCode(str(marker))}, path)
    marker.unlink(missing_ok=True)  # torch.save does not call open(); make sure anyway
    for load in (load_checkpoint, load_weights):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(path)
        message = _assert_one_line(info.value, path)
        assert "weights_only load failed" in message and "can run code" in message
        assert "builtins.open" in message or "io.open" in message
    assert not marker.exists()


def test_old_format_checkpoint_refused_then_upgraded(tmp_path):
    path = tmp_path / "old.pt"
    random.seed(5)
    np.random.seed(5)
    old_rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # holds an ndarray: needs a full unpickle
        "torch": torch.get_rng_state(),
    }
    expected = _draws()
    torch.save({"method": "bmssl", "step": 3, "rng": old_rng}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = _assert_one_line(info.value, path)
    assert "older version of this harness" in message and "upgrade_checkpoint" in message
    upgrade_checkpoint(path)
    assert load_checkpoint(path, expect_keys=("method", "step"))["step"] == 3
    assert _draws() == expected


def test_malformed_rng_state(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"method": "m", "step": 1, "rng": {"python": 3}}, path)
    with pytest.raises(CheckpointError, match="malformed RNG state"):
        load_checkpoint(path)


# -- weights export ------------------------------------------------------------------------------


def test_save_and_load_weights(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    big = torch.randn(1000)
    path = save_weights(tmp_path / "backbone.pt", {**model.state_dict(), "view": big[:2]})
    for loaded in (load_weights(path), torch.load(path, weights_only=True)):
        assert set(loaded) == set(model.state_dict()) | {"view"}
        assert torch.equal(loaded["view"], big[:2])
    # The view was copied, not saved with its 1000-element storage.
    assert path.stat().st_size < 4000
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict({k: v for k, v in load_weights(path).items() if k != "view"})
    with pytest.raises(TypeError, match="save_weights takes"):
        save_weights(tmp_path / "bad.pt", {"w": [1.0]})
    ckpt = save_checkpoint(tmp_path / "last.pt", {"method": "m", "step": 1, "trainer": {}})
    with pytest.raises(CheckpointError, match="training checkpoint: load it with load_checkpoint"):
        load_weights(ckpt)
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.pt.*export the weights again"):
        load_weights(tmp_path / "trunc.pt")


def test_latest_checkpoint_ignores_odd_names(tmp_path):
    for name in ("step_2.pt", "step_10.pt", "step_x.pt", "step_.pt"):
        (tmp_path / name).touch()
    assert latest_checkpoint(tmp_path).name == "step_10.pt"
    assert latest_checkpoint(tmp_path / "none") is None


# -- run lock --------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from bmssl.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold(directory: Path, seconds: float) -> subprocess.Popen:
    """A child process holding the lock on ``directory``, once it has printed ``locked``."""
    script = directory.parent / "holder.py"
    script.write_text(_HOLDER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(directory), str(seconds), "marker-arg"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_runlock_refuses_second_process_and_frees_after_sigkill(tmp_path):
    out = tmp_path / "run"
    child = _hold(out, 60)
    try:
        with pytest.raises(UserError) as info:
            RunLock(out).acquire()
        message = str(info.value)
        assert f"another process (pid {child.pid}: " in message
        assert "marker-arg" in message and str(out) in message
        assert message.endswith("wait for it to finish or choose another --out")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    with RunLock(out) as lock:  # the kernel dropped the dead process's lock
        assert lock.locked
        assert (out / ".lock").read_text().startswith(f"{os.getpid()}\n")
    assert (out / ".lock").exists()  # never deleted: deleting would race a waiting process


def test_runlock_release_wait_and_same_process(tmp_path):
    out = tmp_path / "run"
    with (
        RunLock(out, what="search", option="--storage"),
        pytest.raises(UserError, match="this same process .* for a search.*--storage"),
    ):
        RunLock(out, option="--storage").acquire()
    with RunLock(out):  # released on exit
        pass
    child = _hold(out, 1.0)
    try:
        started = time.monotonic()
        with RunLock(out, wait=True) as lock:
            assert lock.locked and time.monotonic() - started > 0.2
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_runlock_on_unwritable_out(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunLock(afile / "run").acquire()


def test_atomic_link_shares_the_bytes_and_outlives_a_rewrite_of_its_source(tmp_path):
    source, link = tmp_path / "last.pt", tmp_path / "best.pt"
    write_text(source, "step 2")
    write_text(link, "an older best")
    bio.atomic_link(source, link)
    assert os.stat(source).st_ino == os.stat(link).st_ino  # no second copy on disk
    write_text(source, "step 4")  # the trainer's next atomic rewrite of last.pt
    assert link.read_text() == "step 2" and source.read_text() == "step 4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp left


def test_atomic_link_copies_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    source, link = tmp_path / "last.pt", tmp_path / "best.pt"
    write_text(source, "weights")

    def no_links(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(bio.os, "link", no_links)
    bio.atomic_link(source, link)
    assert link.read_text() == "weights"
    assert os.stat(source).st_ino != os.stat(link).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
