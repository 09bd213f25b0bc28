"""Value checks, the non-finite-loss error and the CLI wrapper's exit codes."""

import errno
import math
import pickle

import numpy as np
import pytest

from bmssl.errors import (
    NonFiniteLossError,
    UserError,
    check_finite,
    check_nonnegative,
    check_positive,
    check_probability,
    check_range,
    cli_entry,
    describe_os_error,
)

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    "check",
    [
        check_positive,
        check_finite,
        check_nonnegative,
        check_probability,
        lambda name, value: check_range(name, value, None, None),
    ],
)
def test_checks_reject_nan_and_inf_naming_the_option(check, value):
    with pytest.raises(UserError) as info:
        check("outer_lr", value)
    message = str(info.value)
    assert "outer_lr" in message and repr(value) in message
    assert "\n" not in message


def test_check_positive():
    for ok in (1e-30, 1, 3.5, np.float64(0.1), np.int64(2)):
        check_positive("lr", ok)
    for bad in (0, -1, 0.0, -1e-9):
        with pytest.raises(UserError, match=r"lr must be positive.*greater than 0"):
            check_positive("lr", bad)
    with pytest.raises(UserError, match="lr must be a number"):
        check_positive("lr", "0.1")
    with pytest.raises(UserError, match="lr must be a number"):
        check_positive("lr", None)
    with pytest.raises(UserError, match="too large"):
        check_positive("lr", 10**400)


def test_check_nonnegative_and_finite():
    check_nonnegative("lam", 0)
    check_nonnegative("lam", 0.0)
    check_finite("x", -5.0)
    with pytest.raises(UserError, match="lam must be non-negative"):
        check_nonnegative("lam", -0.001)


def test_check_range_bounds():
    check_range("beta", 0.0, 0.0, 1.0)
    check_range("beta", 1.0, 0.0, 1.0)
    check_range("beta", 1e9, 0.0, None)
    with pytest.raises(UserError, match=r"beta must be a finite number in \(0, 1\]"):
        check_range("beta", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        check_range("beta", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(UserError, match=r"\(-inf, 2\]"):
        check_range("beta", 3, None, 2)


def test_check_probability():
    for ok in (0, 0.5, 1):
        check_probability("p", ok)
    for bad in (-0.1, 1.01):
        with pytest.raises(UserError, match=r"p must be a finite number in \[0, 1\]"):
            check_probability("p", bad)


def test_non_finite_loss_error_message_and_types():
    err = NonFiniteLossError("bmssl", "loss", math.nan, 12, "lower outer_lr (now 0.1) or inner_lr")
    assert str(err) == "bmssl: loss became nan at step 12; lower outer_lr (now 0.1) or inner_lr"
    assert isinstance(err, UserError) and isinstance(err, FloatingPointError)
    assert (err.method, err.key, err.step) == ("bmssl", "loss", 12)
    # Ray moves exceptions between processes by pickling them.
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is NonFiniteLossError and str(again) == str(err)
    assert "learning rate" in str(NonFiniteLossError("simclr", "loss", math.inf, 3))


def _run_cli(exc: BaseException):
    @cli_entry
    def main():
        raise exc

    return main


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "disk full while writing '/data/run/last.pt'"),
        (errno.EROFS, "cannot write '/data/run/last.pt': read-only file system; choose"),
        (errno.EACCES, "no permission to access '/data/run/last.pt' (strerror text); fix the"),
        (errno.EPERM, "no permission to access '/data/run/last.pt'"),
        (errno.ENOTDIR, "a parent of '/data/run/last.pt' is a file"),
    ],
)
def test_cli_entry_maps_environment_oserrors_to_one_line_exit_2(capsys, code, expected):
    err = OSError(code, "strerror text", "/data/run/last.pt")
    with pytest.raises(SystemExit) as info:
        _run_cli(err)()
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and expected in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "--out" in stderr


def test_cli_entry_without_filename():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == (
        "disk full while writing output (No space left on device); "
        "free space or choose another --out"
    )


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EBADF, "Bad file descriptor"),  # a bug, not the user's disk
        FileNotFoundError(errno.ENOENT, "No such file", "x"),
        RuntimeError("wrapped", OSError(errno.ENOSPC, "full")),
        ValueError("plain bug"),
        TypeError("plain bug"),
    ],
)
def test_cli_entry_leaves_other_exceptions_alone(exc):
    with pytest.raises(type(exc)) as info:
        _run_cli(exc)()
    assert info.value is exc


def test_cli_entry_user_error_and_interrupt(capsys):
    with pytest.raises(SystemExit) as info:
        _run_cli(UserError("bad value x; use y"))()
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: bad value x; use y\n"
    with pytest.raises(SystemExit) as info:
        _run_cli(KeyboardInterrupt())()
    assert info.value.code == 130
    with pytest.raises(SystemExit) as info:
        _run_cli(NonFiniteLossError("bmssl", "loss", math.nan, 2, "lower outer_lr"))()
    assert info.value.code == 2
