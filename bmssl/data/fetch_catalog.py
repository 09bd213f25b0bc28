"""What ``python -m bmssl.data fetch`` can download: each dataset's files, pins and layout.

Every URL and checksum here is torchvision's own: it is read at run time from the attributes of
torchvision's dataset classes (``CIFAR100.url`` / ``.tgz_md5``, ``Omniglot.download_url_prefix``
/ ``.zips_md5``, ...), never retyped, so the pins are the ones torchvision's ``download=True``
checks (md5, as torchvision pins them). The one exception is EuroSAT, whose pin torchvision keeps
inside a method: it is written here and checked against torchvision's source by a test. Each file says where it lands under the root, so that the
harness's loader (:mod:`bmssl.data.fewshot_sets`, :mod:`bmssl.data.downstream`) finds it in the
layout ``torchvision.datasets.X(ROOT, download=True)`` would have written.

Not fetchable: miniImageNet (no public source with a stable checksum; :data:`NOT_FETCHABLE` says
how to obtain it), and the downstream sets whose torchvision class pins no checksum or cannot
download (Stanford Cars, FGVC-Aircraft, SUN397, Caltech-101's Google Drive files, CUB): their
registered how-to-get text is shown instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["NOT_FETCHABLE", "EXTRACT_KINDS", "Remote", "Source", "catalogue"]

EXTRACT_KINDS = ("zip", "tar.gz", "tar", "gz", "none")


@dataclass(frozen=True)
class Remote:
    """One file to download.

    ``into`` is the folder under the root where the file (``extract="none"``), its decompressed
    copy (``"gz"``, the name without ``.gz``) or the archive's contents (``"zip"``, ``"tar.gz"``,
    ``"tar"``) land; ``produces`` are paths under the root that exist once it is in place.
    """

    url: str
    checksum: str
    filename: str
    extract: str
    into: str
    produces: tuple[str, ...]
    algorithm: str = "md5"
    size: int | None = None


@dataclass(frozen=True)
class Source:
    """A fetchable dataset: its files, in download order."""

    name: str
    files: tuple[Remote, ...]
    note: str = ""


NOT_FETCHABLE: dict[str, str] = {
    "miniimagenet": (
        "miniImageNet has no public source with a stable checksum, so it is not fetched: put "
        "learn2learn's pickle cache in ROOT (the three files mini-imagenet-cache-train.pkl, "
        "-validation.pkl and -test.pkl that learn2learn.vision.datasets.MiniImagenet(ROOT, mode, "
        "download=True) writes for mode train, validation and test; read as they are, without "
        "running code from them), or the Ravi & Larochelle layout (ROOT/images/ plus train.csv, "
        "val.csv, test.csv with columns filename,label), and set data_root=ROOT"
    ),
}


def _join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def _tarball(name: str, cls: type, inner: str, into: str = "") -> Source:
    """A dataset shipped as one torchvision-pinned tarball (``cls.url`` / ``.tgz_md5``)."""
    where = f"{into}/{inner}" if into else inner
    file = Remote(
        cls.url,  # type: ignore[attr-defined]
        cls.tgz_md5,  # type: ignore[attr-defined]
        cls.filename,  # type: ignore[attr-defined]
        "tar.gz",
        into,
        (where,),
    )
    return Source(name, (file,))


def _omniglot(tv: Any) -> list[Source]:
    """The two zips torchvision fetches, unzipped into ROOT/omniglot-py/ as it does."""
    files = tuple(
        Remote(
            _join(tv.Omniglot.download_url_prefix, f"{part}.zip"),
            md5,
            f"{part}.zip",
            "zip",
            "omniglot-py",
            (f"omniglot-py/{part}",),
        )  # fmt: skip
        for part, md5 in sorted(tv.Omniglot.zips_md5.items())
    )
    return [Source("omniglot", files)]


def _cifar_and_stl(tv: Any) -> list[Source]:
    """CIFAR-10/100 and STL-10 tarballs; CIFAR-FS is CIFAR-100 with bmssl's class split."""
    cifar100 = _tarball("cifar100", tv.CIFAR100, "cifar-100-python")
    return [
        Source("cifarfs", cifar100.files, "CIFAR-100; the class split ships with bmssl"),
        cifar100,
        _tarball("cifar10", tv.CIFAR10, "cifar-10-batches-py"),
        _tarball("stl10", tv.STL10, "stl10_binary"),
    ]


def _flowers(tv: Any) -> list[Source]:
    """The image tarball and two .mat files, all under ROOT/flowers-102/."""
    files = []
    for filename, md5 in tv.Flowers102._file_dict.values():
        is_tar = filename.endswith((".tgz", ".tar.gz"))
        files.append(
            Remote(
                _join(tv.Flowers102._download_url_prefix, filename),
                md5,
                filename,
                "tar.gz" if is_tar else "none",
                "flowers-102",
                ("flowers-102/jpg",) if is_tar else (f"flowers-102/{filename}",),
            )  # fmt: skip
        )
    return [Source("flowers102", tuple(files))]


def _textures_pets_food(tv: Any) -> list[Source]:
    """DTD (its tarball holds dtd/, extracted into ROOT/dtd/), Oxford-IIIT Pet (two tarballs
    under ROOT/oxford-iiit-pet/), Food-101 (one tarball)."""
    dtd = Remote(
        tv.DTD._URL, tv.DTD._MD5, tv.DTD._URL.rsplit("/", 1)[-1], "tar.gz", "dtd",
        ("dtd/dtd/images", "dtd/dtd/labels"),
    )  # fmt: skip
    pets = tuple(
        Remote(
            url,
            md5,
            url.rsplit("/", 1)[-1],
            "tar.gz",
            "oxford-iiit-pet",
            (f"oxford-iiit-pet/{url.rsplit('/', 1)[-1].split('.')[0]}",),
        )  # fmt: skip
        for url, md5 in tv.OxfordIIITPet._RESOURCES
    )
    food = Remote(
        tv.Food101._URL, tv.Food101._MD5, tv.Food101._URL.rsplit("/", 1)[-1], "tar.gz", "",
        ("food-101/images", "food-101/meta"),
    )  # fmt: skip
    return [Source("dtd", (dtd,)), Source("pets", pets), Source("food101", (food,))]


def _fashion_and_voc(tv: Any) -> list[Source]:
    """Fashion-MNIST's four .gz files (decompressed into ROOT/FashionMNIST/raw/ as torchvision
    does) and VOC 2007's trainval and test tarballs (both hold VOCdevkit/VOC2007/, merged)."""
    from torchvision.datasets import voc as tv_voc

    mirror = tv.FashionMNIST.mirrors[0]
    fashion = tuple(
        Remote(
            _join(mirror, filename),
            md5,
            filename,
            "gz",
            "FashionMNIST/raw",
            (f"FashionMNIST/raw/{filename[: -len('.gz')]}",),
        )  # fmt: skip
        for filename, md5 in tv.FashionMNIST.resources
    )
    voc = []
    for key, part in (("2007", "trainval"), ("2007-test", "test")):
        entry = tv_voc.DATASET_YEAR_DICT[key]
        voc.append(
            Remote(
                entry["url"],
                entry["md5"],
                entry["filename"],
                "tar",
                "",
                (f"VOCdevkit/VOC2007/ImageSets/Main/{part}.txt",),
            )  # fmt: skip
        )
    return [Source("fashionmnist", fashion), Source("voc2007", tuple(voc))]


#: EuroSAT (RGB): torchvision keeps this pin inside ``EuroSAT.download`` rather than on the class,
#: so it is written here as torchvision 0.29 has it; a test checks the installed torchvision's
#: source still holds both strings.
EUROSAT_URL = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)
EUROSAT_MD5 = "c8fa014336c82ac7804f0398fcb19387"


def _eurosat() -> list[Source]:
    """The RGB zip (``2750/<class>/``), extracted into ROOT as the cross-domain loader reads it."""
    file = Remote(EUROSAT_URL, EUROSAT_MD5, "EuroSAT.zip", "zip", "", ("2750",))
    return [Source("eurosat", (file,), "BSCD-FSL's EuroSAT (RGB)")]


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Source]:
    """Every fetchable dataset by registry name (torchvision is imported on the first call)."""
    from torchvision import datasets as tv

    groups = (_omniglot, _cifar_and_stl, _flowers, _textures_pets_food, _fashion_and_voc)
    sources = [source for group in groups for source in group(tv)] + _eurosat()
    return {source.name: source for source in sources}
