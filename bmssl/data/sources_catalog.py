"""What ``python -m bmssl.data fetch`` can download: each dataset's files, pins and layout.

Every URL and checksum here is torchvision's own: it is read at run time from the attributes of
torchvision's dataset classes (``CIFAR100.url`` / ``.tgz_md5``, ``Omniglot.download_url_prefix``
/ ``.zips_md5``, ...), never retyped, so the pins are the ones torchvision's ``download=True``
checks (md5, as torchvision pins them). Each file says where it lands under the root, so that the
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
        "val.csv, test.csv with columns filename,label), and pass root=ROOT"
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


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Source]:
    """Every fetchable dataset by registry name (torchvision is imported on the first call)."""
    from torchvision import datasets as tv
    from torchvision.datasets import voc as tv_voc

    sources: list[Source] = []

    # Omniglot: the two zips torchvision fetches, unzipped into ROOT/omniglot-py/ as it does.
    omniglot = tuple(
        Remote(
            _join(tv.Omniglot.download_url_prefix, f"{part}.zip"),
            md5,
            f"{part}.zip",
            "zip",
            "omniglot-py",
            (f"omniglot-py/{part}",),
        )
        for part, md5 in sorted(tv.Omniglot.zips_md5.items())
    )
    sources.append(Source("omniglot", omniglot))

    # CIFAR-FS is CIFAR-100 (its class split ships with bmssl, splits/cifarfs_*.txt).
    cifar100 = _tarball("cifar100", tv.CIFAR100, "cifar-100-python")
    sources.append(Source("cifarfs", cifar100.files, "CIFAR-100; the class split ships with bmssl"))
    sources.append(cifar100)
    sources.append(_tarball("cifar10", tv.CIFAR10, "cifar-10-batches-py"))
    sources.append(_tarball("stl10", tv.STL10, "stl10_binary"))

    # Flowers-102: the image tarball and two .mat files, all under ROOT/flowers-102/.
    flowers = []
    for filename, md5 in tv.Flowers102._file_dict.values():
        is_tar = filename.endswith((".tgz", ".tar.gz"))
        flowers.append(
            Remote(
                _join(tv.Flowers102._download_url_prefix, filename),
                md5,
                filename,
                "tar.gz" if is_tar else "none",
                "flowers-102",
                ("flowers-102/jpg",) if is_tar else (f"flowers-102/{filename}",),
            )
        )
    sources.append(Source("flowers102", tuple(flowers)))

    # DTD: torchvision extracts dtd-r1.0.1.tar.gz (which holds dtd/) into ROOT/dtd/.
    sources.append(
        Source(
            "dtd",
            (
                Remote(
                    tv.DTD._URL,
                    tv.DTD._MD5,
                    tv.DTD._URL.rsplit("/", 1)[-1],
                    "tar.gz",
                    "dtd",
                    ("dtd/dtd/images", "dtd/dtd/labels"),
                ),
            ),
        )
    )

    # Oxford-IIIT Pet: images.tar.gz and annotations.tar.gz under ROOT/oxford-iiit-pet/.
    pets = tuple(
        Remote(
            url,
            md5,
            url.rsplit("/", 1)[-1],
            "tar.gz",
            "oxford-iiit-pet",
            (f"oxford-iiit-pet/{url.rsplit('/', 1)[-1].split('.')[0]}",),
        )
        for url, md5 in tv.OxfordIIITPet._RESOURCES
    )
    sources.append(Source("pets", pets))

    food = Remote(
        tv.Food101._URL,
        tv.Food101._MD5,
        tv.Food101._URL.rsplit("/", 1)[-1],
        "tar.gz",
        "",
        ("food-101/images", "food-101/meta"),
    )
    sources.append(Source("food101", (food,)))

    # Fashion-MNIST: four .gz files, decompressed into ROOT/FashionMNIST/raw/ as torchvision does.
    mirror = tv.FashionMNIST.mirrors[0]
    fashion = tuple(
        Remote(
            _join(mirror, filename),
            md5,
            filename,
            "gz",
            "FashionMNIST/raw",
            (f"FashionMNIST/raw/{filename[: -len('.gz')]}",),
        )
        for filename, md5 in tv.FashionMNIST.resources
    )
    sources.append(Source("fashionmnist", fashion))

    # VOC 2007: trainval and test tarballs, both holding VOCdevkit/VOC2007/ (merged in place).
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
            )
        )
    sources.append(Source("voc2007", tuple(voc)))

    return {source.name: source for source in sources}
