"""Tiny synthetic copies of the paper profiles' datasets, each in its real on-disk layout.

The paper-smoke profiles (``reproduce/configs/*_paper-smoke.yaml``) run the paper profiles' code
on these copies: the same loaders read them as they read the real downloads (Omniglot's unzipped
``omniglot-py/images_{background,evaluation}``, miniImageNet's ``images/`` with the Ravi &
Larochelle CSVs, torchvision's layout of every BiSSL downstream set, CUB's official files, an
ImageNet-style pretext tree).

What a copy keeps of the real set: its folders, file names and formats (PNG, JPEG, CIFAR pickles,
STL-10 and IDX binaries, ``.mat`` files, VOC XML), and its class count wherever a loader reads
or fixes it (Omniglot's 964 + 659 characters, the 100 listed miniImageNet classes, 102 flowers,
397 scenes, 200 birds, ...). What it shrinks: images per class (one for most classes; the few
classes that the episodes, validation, the carved val split and Caltech's 30-per-class training
cut need get more) and the image files (small, a colour per class plus noise). Builders are
seeded, so a copy is the same bytes every time.

:func:`ensure_root` builds a copy into a hidden temporary folder of the cache and renames it into
place only when complete, so an interrupted build never leaves a root that looks finished; a
finished copy is reused. The downstream builders are in :mod:`reproduce.smoke_downstream`, the
cross-domain targets' in :mod:`reproduce.smoke_crossdomain`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: bump when a builder changes what it writes: finished copies of older builders are not reused
VERSION = 2
#: ``split -> (classes, images each)``: the first ``classes`` classes of a few-shot split get
#: that many images, the others one (see :func:`fewshot_needs` in the table driver)
Needs = Mapping[str, tuple[int, int]]
Builder = Callable[[Path, np.random.Generator, Any], None]

# ------------------------------------------------------------------------------------ images


def colour(c: int) -> np.ndarray:
    """An RGB colour of class ``c`` of its own (so a loaded image tells its class)."""
    return np.array([(37 * c) % 256, (91 * c + 40) % 256, (53 * c + 80) % 256], dtype=np.int16)


def pixels(rng: np.random.Generator, c: int, width: int, height: int) -> np.ndarray:
    """``uint8 [height, width, 3]``: the class colour plus uniform noise."""
    noise = rng.integers(-48, 49, size=(height, width, 3), dtype=np.int16)
    return np.clip(colour(c) + noise, 0, 255).astype(np.uint8)


def save_jpeg(
    path: Path, rng: np.random.Generator, c: int, width: int = 112, height: int = 84
) -> None:
    """A small RGB JPEG of class ``c`` (non-square, so loaders resize it to their size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(rng, c, width, height)).save(path, format="JPEG", quality=90)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(f"{line}\n" for line in lines))


def per_class(n_classes: int, needs: tuple[int, int], base: int = 1) -> list[int]:
    """Images of each class: ``needs[1]`` for the first ``needs[0]`` classes, ``base`` for the
    rest."""
    full, count = needs
    return [max(count, base) if c < full else base for c in range(n_classes)]


# ------------------------------------------------------------------------------ few-shot sets

OMNIGLOT_ALPHABETS = {"images_background": (30, 964), "images_evaluation": (20, 659)}


def build_omniglot(root: Path, rng: np.random.Generator, needs: Needs) -> None:
    """``omniglot-py/images_{background,evaluation}/<alphabet>/characterNN/<id>_NN.png``: 1-bit
    105×105 PNGs, as unzipped from torchvision's ``images_background.zip`` and
    ``images_evaluation.zip``, with Omniglot's 30 + 20 alphabets and 964 + 659 characters."""
    from bmssl.data.fewshot_sets import OMNIGLOT_SPLIT_SIZES

    bounds = np.cumsum(OMNIGLOT_SPLIT_SIZES)
    offset = {"train": 0, "val": int(bounds[0]), "test": int(bounds[1])}
    index = 0  # the character's place in the loader's order (background, then evaluation)
    for part, (n_alphabets, n_chars) in OMNIGLOT_ALPHABETS.items():
        sizes = np.full(n_alphabets, n_chars // n_alphabets)
        sizes[: n_chars % n_alphabets] += 1
        for a, size in enumerate(sizes):
            folder = root / "omniglot-py" / part / f"Alphabet_{part[7:10]}_{a:02d}"
            for ch in range(int(size)):
                split = ("train", "val", "test")[int(np.searchsorted(bounds, index, "right"))]
                full, count = needs.get(split, (0, 1))
                n_images = max(count, 1) if index - offset[split] < full else 1
                char = folder / f"character{ch + 1:02d}"
                char.mkdir(parents=True)
                paper = rng.random((105, 105)) > 0.15  # white ground, the character's own strokes
                for i in range(n_images):
                    flip = rng.random((105, 105)) < 0.05
                    Image.fromarray(paper ^ flip).convert("1").save(
                        char / f"{index + 1:04d}_{i + 1:02d}.png"
                    )
                index += 1


def build_miniimagenet(root: Path, rng: np.random.Generator, needs: Needs) -> None:
    """Ravi & Larochelle's layout: ``images/<wnid><8 digits>.jpg`` (84×84) and ``train.csv``,
    ``val.csv``, ``test.csv`` with the header ``filename,label``, over the 64/16/20 listed
    classes."""
    from bmssl.data.fewshot_sets import split_classes

    c = 0
    for split in ("train", "val", "test"):
        rows = ["filename,label"]
        wnids = split_classes("miniimagenet", split)
        for wnid, n_images in zip(wnids, per_class(len(wnids), needs.get(split, (0, 1)))):
            for i in range(n_images):
                name = f"{wnid}{i + 1:08d}.jpg"
                save_jpeg(root / "images" / name, rng, c, 84, 84)
                rows.append(f"{name},{wnid}")
            c += 1
        write_lines(root / f"{split}.csv", rows)


def build_pretext(root: Path, rng: np.random.Generator, options: Any = None) -> None:
    """An ImageNet-style unlabelled pretext tree: ``<wnid>/<wnid>_<n>.JPEG``."""
    for c in range(4):
        wnid = f"n{1440764 + c:08d}"
        for i in range(8):
            save_jpeg(root / wnid / f"{wnid}_{i + 1}.JPEG", rng, c, 128, 96)


# ------------------------------------------------------------------------------ the cache


def builders() -> dict[str, Builder]:
    """Every dataset a copy can be built of, by registry name (``pretext``: the BiSSL pretext
    tree, read as ``imagefolder:<root>``)."""
    from reproduce.smoke_crossdomain import CROSSDOMAIN
    from reproduce.smoke_downstream import DOWNSTREAM

    return {
        "omniglot": build_omniglot,
        "miniimagenet": build_miniimagenet,
        "pretext": build_pretext,
        **DOWNSTREAM,
        **CROSSDOMAIN,
    }


def _key(name: str, options: Any) -> str:
    text = json.dumps([VERSION, name, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


MARKER = ".smoke-data.json"


def ensure_root(name: str, cache: Path, options: Any = None) -> Path:
    """The root of a synthetic copy of ``name`` under ``cache`` (built when missing).

    The folder is named after a hash of the builder version and ``options`` (the few-shot
    ``Needs``), so a changed builder or profile gets a new root instead of a stale one.
    """
    build = builders()[name]
    final = cache / f"{name}-{_key(name, options)}"
    if (final / MARKER).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache))
    try:
        seed = int(_key(name, options), 16) % 2**32
        build(staging, np.random.default_rng(seed), options)
        (staging / MARKER).write_text(json.dumps({"dataset": name, "version": VERSION}) + "\n")
        if final.exists():  # a half-written folder cannot be here (only complete ones are renamed)
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return final


def available() -> list[str]:
    return sorted(builders())
