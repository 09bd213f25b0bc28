"""The hostile data trees and files of the review (``<tmp>/d``), and the tmpfs mounts."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

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


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A 57-byte PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def laughs(levels: int = 9) -> str:
    """A 1 KB YAML "billion laughs": ``levels`` anchors of ten aliases each (10^9 strings)."""
    lines = ['lol0: &l0 "lol"']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"dataset: *l{levels}"]) + "\n"


def build_round3_data(d: Path) -> None:
    """The third round's trees and files (issue 23)."""
    plain_tree(d / "bomb", names(10), 20)
    for name in names(10):  # a bomb in every class: training or validation meets one
        bomb_png(d / "bomb" / name / f"{name}_000.png")
    plain_tree(d / "nested", names(10), 20)
    (d / "nested" / "class07" / "2019").mkdir()
    for image in (d / "nested" / "class07").glob("*.png"):
        image.rename(d / "nested" / "class07" / "2019" / image.name)
    (d / "laughs.yaml").write_text(laughs())
    (d / "dup.yaml").write_text("steps: 3\nwidth: 8\nsteps: 4\n")
    (d / "target").mkdir()


def build_hostile_data(d: Path) -> None:
    """The review's ``<tmp>/d``: every tree and file the cases point at."""
    build_round3_data(d)
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


def mount_tmpfs(path: Path, options: str) -> bool:
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
