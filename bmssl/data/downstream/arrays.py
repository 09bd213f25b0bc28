"""The downstream sets held in memory as arrays: CIFAR-10/100, STL-10 and Fashion-MNIST.

CIFAR and STL-10 are read from their on-disk format directly, because torchvision's classes check
md5 sums on load and would reject a copy that differs in any byte (such as the tests' small
roots). :func:`read_cifar` is the one CIFAR pickle reader (CIFAR-FS uses it too). Images stay at
their native size and are resized on access (:class:`ResizedTensorDataset`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from bmssl.data.base import TensorImageDataset
from bmssl.data.downstream._common import Parts, Request, downstream_set, locate, torchvision_set
from bmssl.data.safe_pickle import load_data_pickle
from bmssl.errors import UserError


class ResizedTensorDataset(TensorImageDataset):
    """uint8 images held at their native size and resized (and channel-expanded) on access.

    Holding CIFAR at 224² would cost 60,000·3·224² bytes (9 GB); the native 32² costs 184 MB.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        channels: int | None = None,
    ) -> None:
        super().__init__(images, targets, classes)
        self.channels = channels or int(images.shape[1])
        if self.channels not in (images.shape[1], 3) or images.shape[1] not in (1, self.channels):
            raise UserError(
                f"cannot show {images.shape[1]}-channel images with channels={channels}; use 1 or 3"
            )
        self.image_shape = (self.channels, image_size, image_size)

    def _convert(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float().div_(255.0)
        size = self.image_shape[1:]
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)  # bilinear antialiasing overshoots slightly at edges
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self._convert(self.images[index : index + 1])[0], self.label(index)

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self._convert(self.images[idx])


class Arrays(NamedTuple):
    """A set read whole: images ``uint8 [N, C, H, W]``, labels, class names, part of each."""

    images: torch.Tensor
    targets: list[int]
    classes: list[str]
    part: list[str]


# ------------------------------------------------------------------------------ CIFAR-10 / -100


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its pickles and what their keys are."""

    inner: str  # folder under the root
    files: tuple[tuple[str, str], ...]  # (pickle, part)
    label_key: str
    names_file: str
    names_key: str


CIFAR10 = CifarLayout(
    "cifar-10-batches-py",
    tuple((f"data_batch_{i}", "train") for i in range(1, 6)) + (("test_batch", "test"),),
    "labels",
    "batches.meta",
    "label_names",
)
CIFAR100 = CifarLayout(
    "cifar-100-python",
    (("train", "train"), ("test", "test")),
    "fine_labels",
    "meta",
    "fine_label_names",
)
# What a folder that does not hold a variant's python pickles raises from read_cifar.
CIFAR_READ_ERRORS = (OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError)


def _unpickle(path: Path) -> dict[str, Any]:
    # CIFAR's pickles hold only dicts, lists and numpy arrays: read them without letting the
    # file run code (a full pickle.load would run whatever a tampered copy names).
    return load_data_pickle(path)


@lru_cache(maxsize=2)
def read_cifar(base: Path, layout: CifarLayout) -> Arrays:
    """Every image of a CIFAR variant (``uint8 [N, 3, 32, 32]``) from the pickles in ``base``.

    Raises one of :data:`CIFAR_READ_ERRORS` when ``base`` does not hold them.
    """
    chunks, targets, part = [], [], []
    for filename, which in layout.files:
        entry = _unpickle(base / filename)
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = entry[layout.label_key]
        if len(data) != len(labels):
            raise ValueError(f"{filename}: {len(data)} images but {len(labels)} labels")
        chunks.append(data)
        targets += [int(t) for t in labels]
        part += [which] * len(data)
    names = list(_unpickle(base / layout.names_file)[layout.names_key])
    return Arrays(torch.from_numpy(np.concatenate(chunks)), targets, names, part)


def _held(
    root: Path | None,
    request: Request,
    inner: str,
    required: Sequence[str],
    read: Callable[[Path], Arrays],
    errors: tuple[type[Exception], ...],
) -> Parts:
    """Every image of the set that ``read`` takes from ``ROOT/inner``, held at native size."""
    base = locate(request, root, inner, required) / inner
    try:
        images, targets, classes, part = read(base.resolve())
    except errors as err:
        raise request.error(f"{str(base)!r} holds unreadable files ({err!r})") from None
    return Parts(ResizedTensorDataset(images, targets, classes, request.image_size), part)


def _cifar(root: Path | None, request: Request, layout: CifarLayout) -> Parts:
    required = [f for f, _ in layout.files] + [layout.names_file]
    read = partial(read_cifar, layout=layout)
    return _held(root, request, layout.inner, required, read, CIFAR_READ_ERRORS)


@downstream_set(
    "cifar10",
    "Run torchvision.datasets.CIFAR10(ROOT, download=True) once on a machine with internet, then "
    "set data_root=ROOT (it holds cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta).",
    image_size=32,
    fewshot=False,
)
def cifar10(root: Path | None, request: Request, **_: Any) -> Parts:
    """CIFAR-10 (10 classes, 32² native, in memory); supervised-only."""
    return _cifar(root, request, CIFAR10)


@downstream_set(
    "cifar100",
    "Run torchvision.datasets.CIFAR100(ROOT, download=True) once on a machine with internet, then "
    "set data_root=ROOT (it holds cifar-100-python/ with train, test, meta).",
    image_size=32,
)
def cifar100(root: Path | None, request: Request, **_: Any) -> Parts:
    """CIFAR-100 fine labels (100 classes, 32² native, in memory)."""
    return _cifar(root, request, CIFAR100)


# --------------------------------------------------------------------------------------- STL-10


@lru_cache(maxsize=1)
def _stl10_arrays(base: Path) -> Arrays:
    chunks, targets, part = [], [], []
    for which in ("train", "test"):
        raw = np.fromfile(base / f"{which}_X.bin", dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise ValueError(f"{which}_X.bin holds {raw.size} bytes, not whole 3x96x96 images")
        # Stored column-major per channel: transpose to [N, C, H, W], as torchvision's STL10 does.
        images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
        labels = np.fromfile(base / f"{which}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise ValueError(f"{which}: {len(images)} images but {len(labels)} labels")
        chunks.append(images)
        targets += labels.tolist()
        part += [which] * len(labels)
    classes = [c for c in (base / "class_names.txt").read_text().splitlines() if c.strip()]
    held = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks)))
    return Arrays(held, targets, classes, part)


@downstream_set(
    "stl10",
    "Run torchvision.datasets.STL10(ROOT, split='train', download=True) once on a machine with "
    "internet, then set data_root=ROOT (it holds stl10_binary/{train,test}_{X,y}.bin and class_names.txt).",
    image_size=96,
    fewshot=False,
)
def stl10(root: Path | None, request: Request, **_: Any) -> Parts:
    """STL-10 labelled images (10 classes, 96² native, in memory); supervised-only.

    Read directly because torchvision's STL10 checks the md5 of every binary (the 2.6 GB unlabeled
    one included) on load.
    """
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    return _held(root, request, "stl10_binary", files, _stl10_arrays, (OSError, ValueError))


# --------------------------------------------------------------------------------- FashionMNIST


@downstream_set(
    "fashionmnist",
    "Run torchvision.datasets.FashionMNIST(ROOT, download=True) once on a machine with internet, then "
    "set data_root=ROOT (it holds FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte).",
    image_size=28,
    fewshot=False,
)
def fashionmnist(root: Path | None, request: Request, channels: int = 1, **_: Any) -> Parts:
    """Fashion-MNIST (10 classes, 28² grey, in memory); ``channels=3`` repeats the grey channel.
    Supervised-only."""
    from torchvision.datasets import FashionMNIST

    if channels not in (1, 3):
        raise UserError(f"fashionmnist: channels must be 1 or 3, got {channels!r}")
    files = [
        f"raw/{p}-{k}"
        for p in ("train", "t10k")
        for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    outer = locate(request, root, "FashionMNIST", files)
    parts = {
        s: torchvision_set(request, outer, FashionMNIST, train=s == "train")
        for s in ("train", "test")
    }
    images = torch.cat([d.data for d in parts.values()]).unsqueeze(1)
    targets = torch.cat([d.targets for d in parts.values()]).tolist()
    part = [s for s, d in parts.items() for _ in range(len(d.targets))]
    full = ResizedTensorDataset(images, targets, FashionMNIST.classes, request.image_size, channels)
    return Parts(full, part)
