"""``python -m bmssl.data fetch``: every download is served by a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmssl.data import fetch as fetching
from bmssl.data import fetch_catalog, get_dataset
from bmssl.data.__main__ import main
from bmssl.data.fetch_catalog import Remote, Source


class Server:
    """Serves ``files`` (path -> bytes); paths in ``truncate`` announce more bytes than sent."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 1000 if self.path in outer.truncate else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if extra else body)
                self.wfile.flush()
                if extra:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def use(monkeypatch: pytest.MonkeyPatch, *sources: Source) -> None:
    """Make the CLI's catalogue hold exactly ``sources``."""
    table = {s.name: s for s in sources}
    monkeypatch.setattr(fetch_catalog, "catalogue", lambda: table)


def toy(server: Server, checksum: str | None = None) -> Source:
    """A dataset of one tar.gz (holding toy/a.txt) and one zip (holding extra/b.txt)."""
    tgz = tar_gz({"toy/a.txt": b"alpha", "toy/sub/c.txt": b"gamma"})
    zp = zip_bytes({"extra/b.txt": b"beta"})
    server.files["/toy.tar.gz"] = tgz
    server.files["/extra.zip"] = zp
    return Source(
        "toy",
        (
            Remote(
                f"{server.url}/toy.tar.gz",
                checksum or md5(tgz),
                "toy.tar.gz",
                "tar.gz",
                "",
                ("toy/a.txt",),
            ),
            Remote(f"{server.url}/extra.zip", md5(zp), "extra.zip", "zip", "z", ("z/extra/b.txt",)),
        ),
    )


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def visible(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_fetch_lands_layout_and_marker(server, monkeypatch, tmp_path, capsys):
    source = toy(server)
    use(monkeypatch, source)
    assert main(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "toy/a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "toy/sub/c.txt").read_bytes() == b"gamma"
    assert (tmp_path / "z/extra/b.txt").read_bytes() == b"beta"
    marker = json.loads((tmp_path / ".fetched-toy.json").read_text())
    assert [f["checksum"] for f in marker["files"]] == [f.checksum for f in source.files]
    # No archive, temporary file or staging folder is left.
    assert visible(tmp_path) == [
        ".fetched-toy.json",
        "toy",
        "toy/a.txt",
        "toy/sub",
        "toy/sub/c.txt",
        "z",
        "z/extra",
        "z/extra/b.txt",
    ]
    assert capsys.readouterr().out == ""


def test_checksum_mismatch_exits_2_naming_file_and_digests(server, monkeypatch, tmp_path, capsys):
    wrong = "0" * 32
    source = toy(server, checksum=wrong)
    use(monkeypatch, source)
    assert exit_code(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    found = md5(server.files["/toy.tar.gz"])
    assert "toy.tar.gz" in err and wrong in err and found in err
    assert visible(tmp_path) == []  # no partial file, no marker


def test_interrupted_transfer_leaves_nothing(server, monkeypatch, tmp_path, capsys):
    source = toy(server)
    server.truncate.add("/extra.zip")  # the second file breaks off: the first is in place
    use(monkeypatch, source)
    assert exit_code(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not download {server.url}/extra.zip: ")
    assert "check the network or fetch it by hand into" in err
    assert not (tmp_path / ".fetched-toy.json").exists()
    assert not (tmp_path / "z").exists()  # the folder made for it is removed again
    assert not any(".part" in p or "extra" in p for p in visible(tmp_path))


def test_unreachable_server_is_one_line(monkeypatch, tmp_path, capsys):
    remote = Remote("http://127.0.0.1:9/none.zip", "0" * 32, "none.zip", "zip", "", ("x",))
    use(monkeypatch, Source("gone", (remote,)))
    assert exit_code(["fetch", "gone", "--root", str(tmp_path), "--quiet", "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not download http://127.0.0.1:9/none.zip: ")
    assert len(err.splitlines()) == 1
    assert visible(tmp_path) == []


def test_rerun_over_complete_root_makes_no_request(server, monkeypatch, tmp_path):
    use(monkeypatch, toy(server))
    assert main(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 0
    assert len(server.requests) == 2
    assert main(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 0
    assert len(server.requests) == 2
    # A root that lost a file is no longer complete: fetched again.
    (tmp_path / "toy/a.txt").unlink()
    assert main(["fetch", "toy", "--root", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "toy/a.txt").read_bytes() == b"alpha"


def test_list_prints_every_entry_with_checksum(capsys):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    catalogue = fetch_catalog.catalogue()
    for name in ("omniglot", "cifarfs", "cifar10", "cifar100"):
        assert name in catalogue
    for name, source in catalogue.items():
        assert any(line.startswith(name) for line in out.splitlines())
        for remote in source.files:
            assert len(remote.checksum) == 32
            assert f"{remote.url}  md5:{remote.checksum}" in out
    assert "miniimagenet" in out


def test_miniimagenet_says_how_to_get_it(tmp_path, capsys):
    assert exit_code(["fetch", "miniimagenet", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "learn2learn" in err and "train.csv" in err
    assert visible(tmp_path) == []


def test_unknown_and_unfetchable_names(tmp_path, capsys):
    assert exit_code(["fetch", "nosuchset", "--root", str(tmp_path)]) == 2
    assert "fetchable:" in capsys.readouterr().err
    assert exit_code(["fetch", "cub", "--root", str(tmp_path)]) == 2
    assert "no pinned public download" in capsys.readouterr().err


def test_omniglot_entry_lands_where_the_loader_reads(server, monkeypatch, tmp_path):
    """The real catalogue entry, its URLs pointed at the local server and checksums patched."""
    real = fetch_catalog.catalogue()["omniglot"]
    files = []
    for remote in real.files:
        part = remote.filename[: -len(".zip")]
        entries = {
            f"{part}/Alpha_{part[-4:]}/character{c:02d}/{c:02d}_{i}.png": png(40 * c + i)
            for c in (1, 2)
            for i in (1, 2)
        }
        data = zip_bytes(entries)
        server.files[f"/{remote.filename}"] = data
        files.append(
            Remote(
                f"{server.url}/{remote.filename}",
                md5(data),
                remote.filename,
                remote.extract,
                remote.into,
                remote.produces,
            )
        )
    use(monkeypatch, Source("omniglot", tuple(files)))
    assert main(["fetch", "omniglot", "--root", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "omniglot-py/images_background").is_dir()
    assert (tmp_path / "omniglot-py/images_evaluation").is_dir()
    train = get_dataset("omniglot", tmp_path, split_sizes=(2, 1, 1), image_size=8)
    test = get_dataset("omniglot", tmp_path, split="test", split_sizes=(2, 1, 1), image_size=8)
    assert train.num_classes == 2 and len(train) == 4
    assert test.num_classes == 1


def test_fetch_function_reports_marker(server, tmp_path):
    source = toy(server)
    marker = fetching.fetch("toy", tmp_path, quiet=True, sources={"toy": source})
    assert marker == tmp_path / ".fetched-toy.json"
    assert fetching.is_complete(source, tmp_path)


def test_gz_and_plain_files_and_a_shared_file_is_fetched_once(server, tmp_path):
    import gzip

    raw = b"idx-bytes" * 10
    server.files["/d.gz"] = gz = gzip.compress(raw)
    server.files["/m.mat"] = mat = b"matlab"
    shared = Remote(f"{server.url}/d.gz", md5(gz), "d.gz", "gz", "A/raw", ("A/raw/d",))
    plain = Remote(f"{server.url}/m.mat", md5(mat), "m.mat", "none", "A", ("A/m.mat",))
    sources = {"one": Source("one", (shared, plain)), "two": Source("two", (shared,))}
    fetching.fetch("one", tmp_path, quiet=True, sources=sources)
    assert (tmp_path / "A/raw/d").read_bytes() == raw and not (tmp_path / "A/raw/d.gz").exists()
    assert (tmp_path / "A/m.mat").read_bytes() == mat
    fetching.fetch("two", tmp_path, quiet=True, sources=sources)  # d.gz is recorded by "one"
    assert len(server.requests) == 2
    assert (tmp_path / ".fetched-two.json").is_file()
