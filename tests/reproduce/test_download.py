"""``table1.py --download`` and ``bissl_table.py --download``: missing roots are fetched (from a
local HTTP server on 127.0.0.1 standing in for the catalogue's URLs) before anything trains; a
complete root is not fetched again; a set without a public source stops the command first."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bmssl.data import fetch_catalog
from bmssl.data.fetch_catalog import Remote, Source
from reproduce.roots import download_missing
from reproduce.smoke_data import build_omniglot, build_pretext, ensure_root
from reproduce.smoke_downstream import build_cifar10
from tests.bmssl.data.test_fetch import Server, md5

CONFIGS = Path(__file__).resolve().parents[2] / "reproduce" / "configs"
OMNIGLOT_NEEDS = {"train": (5, 2), "val": (5, 16), "test": (20, 6)}


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def zipped(folder: Path) -> bytes:
    """``folder`` as a zip whose entries start with the folder's name (as Omniglot's zips do)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, str(path.relative_to(folder.parent)))
    return buf.getvalue()


def tarred(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return buf.getvalue()


def serve(monkeypatch: pytest.MonkeyPatch, *sources: Source) -> None:
    table = {s.name: s for s in sources}
    monkeypatch.setattr(fetch_catalog, "catalogue", lambda: table)


def omniglot_source(server: Server, tmp_path: Path) -> Source:
    """Omniglot's two zips (a synthetic copy in the real layout), served locally."""
    built = tmp_path / "built-omniglot"
    build_omniglot(built, np.random.default_rng(0), OMNIGLOT_NEEDS)
    files = []
    for part in ("images_background", "images_evaluation"):
        body = zipped(built / "omniglot-py" / part)
        server.files[f"/{part}.zip"] = body
        files.append(
            Remote(
                f"{server.url}/{part}.zip", md5(body), f"{part}.zip", "zip", "omniglot-py",
                (f"omniglot-py/{part}",),
            )
        )  # fmt: skip
    return Source("omniglot", tuple(files))


def cifar10_source(server: Server, tmp_path: Path) -> Source:
    built = tmp_path / "built-cifar10"
    build_cifar10(built, np.random.default_rng(0))
    body = tarred(built / "cifar-10-batches-py")
    server.files["/cifar-10-python.tar.gz"] = body
    remote = Remote(
        f"{server.url}/cifar-10-python.tar.gz", md5(body), "cifar-10-python.tar.gz", "tar.gz",
        "", ("cifar-10-batches-py",),
    )  # fmt: skip
    return Source("cifar10", (remote,))


def derived(tmp_path: Path, table: str, extra: str = "") -> Path:
    """A profile of the paper-smoke budgets that reads real (downloaded) roots."""
    path = tmp_path / f"{table}_dl.yaml"
    path.write_text(
        f"derives: {CONFIGS / f'{table}_paper-smoke.yaml'}\nprofile: dl\n"
        f"synthetic_data: false\n{extra}"
    )
    return path


def exit_code(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_table1_download_fetches_then_trains_and_a_rerun_requests_nothing(
    server, monkeypatch, tmp_path, capsys
):
    from reproduce import table1

    serve(monkeypatch, omniglot_source(server, tmp_path))
    data, out = tmp_path / "data", tmp_path / "out"
    argv = [
        "--profile", str(derived(tmp_path, "table1")), "--datasets", "omniglot",
        "--methods", "random,simclr", "--data-dir", str(data), "--download", "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    table = table1.main(argv)
    assert sorted(server.requests) == ["/images_background.zip", "/images_evaluation.zip"]
    root = data / "omniglot"
    assert (root / ".fetched-omniglot.json").is_file()
    assert len(list((root / "omniglot-py" / "images_background").glob("*/*"))) == 964
    assert "SimCLR" in table.rows and "omniglot 20w5s" in table.columns
    cell = json.loads((out / "dl" / "table1.json").read_text())["rows"]["SimCLR"]["omniglot 5w1s"]
    assert np.isfinite(cell["mean"])
    # The root is complete: a rerun downloads nothing (and reuses the cached cells).
    table1.main(argv)
    assert len(server.requests) == 2


def test_table1_download_refuses_miniimagenet_before_anything(
    server, monkeypatch, tmp_path, capsys
):
    from reproduce import table1

    serve(monkeypatch, omniglot_source(server, tmp_path))
    out = tmp_path / "out"
    argv = ["--config", "paper", "--data-dir", str(tmp_path / "data"), "--download"]
    assert exit_code(table1.main, [*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--download cannot fetch 'miniimagenet'" in err
    assert fetch_catalog.NOT_FETCHABLE["miniimagenet"] in err  # how to obtain it
    # Checked first: omniglot was not downloaded in vain, nothing trained or written.
    assert server.requests == [] and not out.exists() and not (tmp_path / "data").exists()


def test_bissl_download_fetches_then_trains_and_a_rerun_requests_nothing(
    server, monkeypatch, tmp_path
):
    from reproduce import bissl_table

    serve(monkeypatch, cifar10_source(server, tmp_path))
    pretext = tmp_path / "imagenet-train"
    build_pretext(pretext, np.random.default_rng(0))
    out = tmp_path / "out"
    argv = [
        "--profile", str(derived(tmp_path, "bissl")), "--datasets", "cifar10",
        "--data-dir", str(tmp_path / "data"), "--data-root", f"pretext={pretext}",
        "--download", "--out", str(out), "--quiet",
    ]  # fmt: skip
    table = bissl_table.main(argv)
    assert server.requests == ["/cifar-10-python.tar.gz"]
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert set(table.rows) >= {"BiSSL", "Baseline (SimCLR → fine-tune)"}
    # The paper profile's `imagefolder:` pretext set read the --data-root pretext=PATH tree.
    metrics = json.loads(
        (out / "dl" / "runs" / "cifar10" / "bissl" / "seed0" / "metrics.json").read_text()
    )
    assert metrics["config"]["pretext"]["dataset"] == f"imagefolder:{pretext}"
    bissl_table.main(argv)
    assert len(server.requests) == 1


@pytest.mark.parametrize("dataset", ["cars", "aircraft", "sun397", "caltech101", "cub"])
def test_bissl_download_refuses_sets_without_a_source(
    server, monkeypatch, tmp_path, capsys, dataset
):
    from reproduce import bissl_table

    serve(monkeypatch, cifar10_source(server, tmp_path))
    out = tmp_path / "out"
    argv = [
        "--config", "paper", "--datasets", f"cifar10,{dataset}", "--data-dir",
        str(tmp_path / "data"), "--data-root", f"pretext={tmp_path}", "--download", "--out",
        str(out), "--quiet",
    ]  # fmt: skip
    assert exit_code(bissl_table.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--download cannot fetch {dataset!r}" in err and len(err.splitlines()) == 1
    assert server.requests == [] and not out.exists()


def test_download_needs_a_place_and_refuses_synthetic_profiles(tmp_path, capsys):
    from reproduce import bissl_table, table1

    out = tmp_path / "out"
    assert exit_code(table1.main, ["--config", "paper", "--download", "--out", str(out)]) == 2
    assert "--download needs a root for omniglot, miniimagenet" in capsys.readouterr().err
    smoke = ["--profile", "paper-smoke", "--download", "--data-dir", str(tmp_path), "--out"]
    assert exit_code(bissl_table.main, [*smoke, str(out)]) == 2
    assert "builds its own synthetic copies" in capsys.readouterr().err
    assert not out.exists()


def test_a_present_root_is_never_downloaded(server, monkeypatch, tmp_path):
    """A root the loader accepts (fetched by torchvision, or a set without a public source that
    the user put there) is left alone, marker or not."""
    from bmssl.data import get_dataset

    serve(monkeypatch, omniglot_source(server, tmp_path))
    omniglot = ensure_root("omniglot", tmp_path / "copies", OMNIGLOT_NEEDS)
    mini = ensure_root("miniimagenet", tmp_path / "copies", {"test": (5, 6)})
    roots = {"omniglot": str(omniglot), "miniimagenet": str(mini)}

    def probe(name: str, root: str) -> None:
        get_dataset(name, root, split="test")

    assert download_missing(roots, ["omniglot", "miniimagenet"], probe, quiet=True) == []
    assert server.requests == []
