"""Image-classification datasets as the harness sees them.

A dataset yields ``(image, label)`` with ``image`` a float tensor ``[C, H, W]`` in ``[0, 1]`` and
``label`` in ``0..num_classes-1``, or, for a multi-label set (``multilabel``: VOC 2007), a float
multi-hot ``[num_classes]``. It exposes ``targets`` (one class per item), ``classes`` (their
names) and ``labels()`` (every label as one tensor, read without decoding an image);
``difficult_matrix`` marks the image-class pairs its evaluation leaves out (VOC; else ``None``).
``load_images`` fetches a batch by index, fast for tensor-backed sets.

Files read with PIL are converted by :func:`bmssl.data.images.convert_image`, whatever their
mode: 16- and 32-bit integer images are scaled to 8 bit by their bit depth (16-bit: value / 257),
float images taken in [0, 1] (divided by their maximum when it exceeds 1), and transparent images
(RGBA, LA, palette with transparency) composited on a WHITE background. A file that cannot be
decoded raises :class:`bmssl.data.images.CorruptImageError` naming it; the local-root loaders'
``skip_corrupt=True`` leaves such files out instead, checked when the dataset is built.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bmssl.data.images import (
    SKIP_FLAG,
    CorruptImageError,
    bomb_check,
    bomb_reason,
    convert_image,
)
from bmssl.errors import DataNotFoundError, UserError

P = TypeVar("P", bound="PILImageDataset")


class ImageDataset(Dataset):
    """Base class: subclasses set ``targets``, ``classes`` and ``image_shape`` and load items."""

    targets: list[int]
    classes: list[str]
    image_shape: tuple[int, int, int]
    # Multi-label sets: multi-hot float32 [N, C], whose rows the items yield as labels; ``targets``
    # then holds one class per item (the first positive) for per-class tools such as splits.
    label_matrix: np.ndarray | None = None
    # bool [N, C]: image-class pairs present only through objects flagged difficult (VOC), which
    # the devkit's evaluation leaves out.
    difficult_matrix: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Whether items carry multi-hot labels (``label_matrix``) rather than one class."""
        return self.label_matrix is not None

    @property
    def in_memory(self) -> bool:
        """Whether the images are held decoded in memory (preloading would gain nothing)."""
        return False

    def __len__(self) -> int:
        return len(self.targets)

    def label(self, index: int) -> int | torch.Tensor:
        """The label item ``index`` yields: its class, or its multi-hot row."""
        if self.label_matrix is not None:
            return torch.from_numpy(np.array(self.label_matrix[index], dtype=np.float32))
        return self.targets[index]

    def labels(self) -> torch.Tensor:
        """Every label, no image decoded: ``long [N]``, or ``float [N, C]`` multi-hot when multi-label."""
        if self.label_matrix is not None:
            return torch.tensor(np.asarray(self.label_matrix, dtype=np.float32))
        return torch.tensor(self.targets, dtype=torch.long)

    def indices_by_class(self) -> list[np.ndarray]:
        """For each class, the item indices that carry it (sorted)."""
        targets = np.asarray(self.targets)
        order = np.argsort(targets, kind="stable")
        bounds = np.searchsorted(targets[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images ``[len(indices), C, H, W]`` as float in [0, 1]."""
        return torch.stack([self[int(i)][0] for i in indices])


class TensorImageDataset(ImageDataset):
    """Dataset held in memory as ``uint8 [N, C, H, W]`` images and integer targets."""

    def __init__(
        self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor, classes: Sequence[str]
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.image_shape = tuple(images.shape[1:])  # type: ignore[assignment]
        if len(self.targets) != images.shape[0]:
            raise ValueError("images and targets differ in length")

    @property
    def in_memory(self) -> bool:
        return True

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self.images[index].float().div_(255.0), self.label(index)

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.images[idx].float().div_(255.0)


class PILImageDataset(ImageDataset):
    """Base of datasets whose items are PIL images, resized to ``image_size`` and converted to ``channels``.

    Subclasses implement ``open_image(index)`` (and ``describe`` and ``_keep_items`` for better
    messages and :meth:`select`); decoding, mode conversion and errors are handled here.
    """

    def __init__(
        self, targets: Sequence[int], classes: Sequence[str], image_size: int, channels: int = 3
    ) -> None:
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.channels = channels
        self.image_shape = (channels, image_size, image_size)
        from torchvision.transforms import v2

        self._to_tensor = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize((image_size, image_size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def open_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages."""
        return f"item {index}"

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` decoded as an 8-bit ``L`` or ``RGB`` image (its file closed).

        Any failure to turn the file's bytes into pixels is the file's fault (Pillow's decoders
        raise OSError, SyntaxError, EOFError, ValueError, struct.error, ... for hostile data)
        and becomes a :class:`CorruptImageError` naming it; a missing file is a
        :class:`DataNotFoundError`. A header declaring more pixels than Pillow's bomb limit is
        refused before decoding (:func:`bmssl.data.images.bomb_check`).
        """
        where = self.describe(index)
        try:
            with self.open_image(index) as img:
                bomb_check(img, where)
                img.load()
                return convert_image(img, self.channels, where)
        except FileNotFoundError:
            raise DataNotFoundError(
                f"image {where} is missing: restore it, or remove it from the dataset's folders "
                "or lists"
            ) from None
        except UserError:
            raise
        except Image.DecompressionBombError as err:  # Pillow refuses twice its limit itself
            raise CorruptImageError(where, bomb_reason(err)) from None
        except Exception as err:
            raise CorruptImageError(where, err) from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self._to_tensor(self.load_image(index)), self.label(index)

    def select(self: P, indices: Sequence[int] | np.ndarray) -> P:
        """A copy holding only the items at ``indices``, same classes."""
        idx = np.asarray(indices, dtype=np.int64)
        out = copy.copy(self)
        out.targets = [self.targets[i] for i in idx]
        if self.label_matrix is not None:
            out.label_matrix = self.label_matrix[idx]
        if self.difficult_matrix is not None:
            out.difficult_matrix = self.difficult_matrix[idx]
        out._keep_items(idx)
        return out

    def _keep_items(self, indices: np.ndarray) -> None:
        """Narrow the subclass's own per-item state to ``indices`` (for :meth:`select`)."""
        raise NotImplementedError


class FileImageDataset(PILImageDataset):
    """Dataset of image files read with PIL, resized to ``image_size`` and converted to ``channels``."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Sequence[int],
        classes: Sequence[str],
        image_size: int,
        channels: int = 3,
    ) -> None:
        super().__init__(targets, classes, image_size, channels)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.targets):
            raise ValueError("paths and targets differ in length")

    def open_image(self, index: int) -> Image.Image:
        return Image.open(self.paths[index])

    def describe(self, index: int) -> str:
        return repr(str(self.paths[index]))

    def _keep_items(self, indices: np.ndarray) -> None:
        self.paths = [self.paths[i] for i in indices]


def drop_unreadable(
    dataset: P, part: Sequence[str] | np.ndarray | None, where: str, workers: int | None = None
) -> tuple[P, np.ndarray | None]:
    """``dataset`` (and its items' ``part``) without the items that cannot be decoded.

    Every item is decoded once, so indices stay consistent afterwards; one warning says how many
    were left out.
    """
    readable = np.ones(len(dataset), dtype=bool)

    def check(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                dataset.load_image(i)
            except CorruptImageError:
                readable[i] = False

    _in_chunks(len(dataset), check, workers)
    kept_part = None if part is None else np.asarray(part)
    if readable.all():
        return dataset, kept_part
    bad = np.nonzero(~readable)[0]
    warnings.warn(
        f"{where}: left out {len(bad)} unreadable image(s) of {len(dataset)} "
        f"(first: {dataset.describe(int(bad[0]))}) as {SKIP_FLAG} asks",
        stacklevel=2,
    )
    keep = np.nonzero(readable)[0]
    return dataset.select(keep), None if kept_part is None else kept_part[keep]


class SubsetByClass(ImageDataset):
    """The items of ``base`` whose class is in ``keep`` (labels renumbered 0..len(keep)-1).

    Multi-label matrices (``label_matrix``, ``difficult_matrix``) follow, narrowed to the kept
    items and classes.
    """

    def __init__(
        self, base: ImageDataset, keep: Sequence[int], item_mask: np.ndarray | None = None
    ) -> None:
        self.base = base
        keep = list(keep)
        remap = {c: i for i, c in enumerate(keep)}
        targets = np.asarray(base.targets)
        mask = np.isin(targets, keep)
        if item_mask is not None:
            mask &= item_mask
        self.indices = np.nonzero(mask)[0]
        self.targets = [remap[int(t)] for t in targets[self.indices]]
        self.classes = [base.classes[c] for c in keep]
        self.image_shape = base.image_shape
        rows_cols = np.ix_(self.indices, np.asarray(keep, dtype=np.int64))
        if base.label_matrix is not None:
            self.label_matrix = base.label_matrix[rows_cols]
        if base.difficult_matrix is not None:
            self.difficult_matrix = base.difficult_matrix[rows_cols]

    @property
    def in_memory(self) -> bool:
        return self.base.in_memory

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image, _ = self.base[int(self.indices[index])]
        return image, self.label(index)

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.base.get_batch(self.indices[np.asarray(indices, dtype=np.int64)])


def _in_chunks(n: int, work: Callable[[int, int], None], workers: int | None = None) -> None:
    """``work(lo, hi)`` over ``0..n`` in chunks of 256, on a few threads (PIL decodes in parallel)."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda lo: work(lo, min(lo + 256, n)), range(0, n, 256)))


def preload_images(dataset: ImageDataset, workers: int | None = None) -> TensorImageDataset:
    """Decode every item of ``dataset`` once into memory (``uint8``), with a few threads.

    The result has the same items, targets, classes and label matrices, and fast ``get_batch``.
    """
    images = torch.empty((len(dataset), *dataset.image_shape), dtype=torch.uint8)

    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            images[i] = dataset[i][0].mul(255.0).round_().to(torch.uint8)

    _in_chunks(len(dataset), fill, workers)
    held = TensorImageDataset(images, dataset.targets, dataset.classes)
    held.label_matrix, held.difficult_matrix = dataset.label_matrix, dataset.difficult_matrix
    return held


def preload_if(dataset: ImageDataset, preload: bool) -> ImageDataset:
    """``dataset`` decoded into memory when ``preload`` and not already held there."""
    return preload_images(dataset) if preload and not dataset.in_memory else dataset


def load_images(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Batch of images from any dataset; uses ``get_batch`` when the dataset has it."""
    if isinstance(dataset, ImageDataset):
        return dataset.get_batch(indices)
    return torch.stack([dataset[int(i)][0] for i in indices])
