"""Image-classification datasets as the harness sees them.

A dataset yields ``(image, label)`` with ``image`` a float tensor ``[C, H, W]`` in ``[0, 1]`` and
``label`` in ``0..num_classes-1``; it exposes ``targets`` (one label per item) and ``classes``
(their names). ``load_images`` fetches a batch by index, fast for tensor-backed sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """Base class: subclasses set ``targets``, ``classes`` and ``image_shape`` and load items."""

    targets: list[int]
    classes: list[str]
    image_shape: tuple[int, int, int]
    # Multi-label sets (VOC 2007) set this and yield multi-hot float targets instead of an int.
    multilabel: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255.0), self.targets[index]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.images[idx].float().div_(255.0)


class PILImageDataset(ImageDataset):
    """Base of datasets whose items are PIL images, resized to ``image_size`` and converted to ``channels``.

    Subclasses implement ``open_image(index)``; conversion to a float tensor happens here.
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.open_image(index)
        try:
            return self._to_tensor(img.convert("L" if self.channels == 1 else "RGB")), self.targets[
                index
            ]
        finally:
            img.close()


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


class SubsetByClass(ImageDataset):
    """The items of ``base`` whose class is in ``keep`` (labels renumbered 0..len(keep)-1)."""

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.base[int(self.indices[index])]
        return image, self.targets[index]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.base.get_batch(self.indices[np.asarray(indices, dtype=np.int64)])


def preload_images(dataset: ImageDataset, workers: int | None = None) -> TensorImageDataset:
    """Decode every item of ``dataset`` once into memory (``uint8``), with a few threads.

    The result has the same items, targets and classes, and fast ``get_batch`` for episodes.
    """
    n = len(dataset)
    images = torch.empty((n, *dataset.image_shape), dtype=torch.uint8)

    def fill(lo: int) -> None:
        for i in range(lo, min(lo + 256, n)):
            images[i] = dataset[i][0].mul(255.0).round_().to(torch.uint8)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(0, n, 256)))
    return TensorImageDataset(images, dataset.targets, dataset.classes)


def load_images(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Batch of images from any dataset; uses ``get_batch`` when the dataset has it."""
    if isinstance(dataset, ImageDataset):
        return dataset.get_batch(indices)
    return torch.stack([dataset[int(i)][0] for i in indices])
