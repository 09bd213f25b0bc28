"""Task reconstruction from unlabeled images (BMSSL step 1).

A task draws N distinct unlabeled images and makes K support and Q query views of each with the
SSL augmentation; the image's position ``0..N-1`` in the task is its pseudo-label. A meta-batch
stacks B such tasks. Support rows are class-major: row ``c·K + k`` is view k of image c (queries
likewise with Q), so labels are ``arange(N).repeat_interleave(K)``.

Sampling is a pure function of ``(seed, step)``: image choice uses a NumPy generator seeded with
both, and all ``B·N·(K+Q)`` views come from one batched :class:`~bmssl.data.SSLViews` call whose
per-view parameters are drawn from a CPU ``torch.Generator`` seeded from it. The global RNG is
untouched, a resumed run sees the same tasks as an uninterrupted one, and with ``device`` the
views are made there from the same parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bmssl.data.base import ImageDataset
from bmssl.data.views import SSLViews
from bmssl.errors import UserError


@dataclass(frozen=True)
class Task:
    """One task: ``support [N·K, C, H, W]`` and ``query [N·Q, C, H, W]`` views, class-major."""

    support: torch.Tensor
    query: torch.Tensor
    task_images: int
    support_views: int
    query_views: int

    @property
    def support_labels(self) -> torch.Tensor:
        """Pseudo-labels ``[N·K]``: the image index of each support view."""
        return torch.arange(self.task_images, device=self.support.device).repeat_interleave(
            self.support_views
        )

    @property
    def query_labels(self) -> torch.Tensor:
        """Pseudo-labels ``[N·Q]``: the image index of each query view."""
        return torch.arange(self.task_images, device=self.query.device).repeat_interleave(
            self.query_views
        )


@dataclass(frozen=True)
class TaskBatch:
    """B tasks stacked: ``support [B, N·K, C, H, W]``, ``query [B, N·Q, C, H, W]``.

    ``image_indices [B, N]`` are the dataset items each task was built from (for inspection).
    """

    support: torch.Tensor
    query: torch.Tensor
    task_images: int
    support_views: int
    query_views: int
    image_indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def __getitem__(self, b: int) -> Task:
        return Task(
            self.support[b], self.query[b], self.task_images, self.support_views, self.query_views
        )

    def tasks(self) -> Iterator[Task]:
        """The B tasks one by one."""
        for b in range(len(self)):
            yield self[b]

    @property
    def support_labels(self) -> torch.Tensor:
        """``[N·K]``, shared by every task of the batch."""
        return self[0].support_labels

    @property
    def query_labels(self) -> torch.Tensor:
        """``[N·Q]``, shared by every task of the batch."""
        return self[0].query_labels

    def select(self, tasks: slice) -> TaskBatch:
        """The tasks ``tasks`` of the batch (e.g. one rank's share), as a batch."""
        return TaskBatch(
            self.support[tasks],
            self.query[tasks],
            self.task_images,
            self.support_views,
            self.query_views,
            self.image_indices[tasks],
        )

    def to(self, *args, **kwargs) -> TaskBatch:
        """Views moved/cast like ``Tensor.to`` (e.g. ``.to(torch.float64)`` for exact tests)."""
        return TaskBatch(
            self.support.to(*args, **kwargs),
            self.query.to(*args, **kwargs),
            self.task_images,
            self.support_views,
            self.query_views,
            self.image_indices,
        )


def reconstruct_tasks(
    images: torch.Tensor,
    views: SSLViews,
    support_views: int,
    query_views: int,
    generator: torch.Generator | None = None,
) -> TaskBatch:
    """Tasks from ``images [B, N, C, H, W]``: K + Q independent views of every image.

    One batched ``views.repeat`` call makes all ``B·N·(K+Q)`` views on the images' device, its
    parameters drawn from ``generator`` (CPU; without one, seeded by one draw of torch's global
    RNG). :class:`TaskSampler` passes a generator seeded from ``(seed, step)``.
    """
    if images.dim() != 5:
        raise ValueError(f"images must be [B, N, C, H, W], got {tuple(images.shape)}")
    b, n = images.shape[:2]
    v = views.repeat(
        images.flatten(0, 1), support_views + query_views, generator
    )  # [B·N, K+Q, C, H, W]
    chw = v.shape[2:]  # crop levels resize to the views' image_size
    v = v.reshape(b, n, support_views + query_views, *chw)
    support = v[:, :, :support_views].reshape(b, n * support_views, *chw)
    query = v[:, :, support_views:].reshape(b, n * query_views, *chw)
    return TaskBatch(
        support.contiguous(),
        query.contiguous(),
        n,
        support_views,
        query_views,
        torch.full((b, n), -1, dtype=torch.long),
    )


class TaskSampler:
    """Seeded meta-batches of reconstructed tasks from an (unlabeled) image dataset.

    ``sample(step)`` returns B tasks of N distinct images each (images may recur across tasks),
    K support and Q query views per image; the same ``(seed, step)`` gives the same tensors.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        task_images: int,
        support_views: int,
        query_views: int,
        meta_batch: int,
        augment: str = "default",
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("task_images", task_images),
            ("support_views", support_views),
            ("query_views", query_views),
            ("meta_batch", meta_batch),
        ):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        self.dataset = dataset
        self.task_images, self.support_views, self.query_views = (
            task_images,
            support_views,
            query_views,
        )
        self.meta_batch = meta_batch
        self.seed = seed
        if len(dataset) < task_images:
            raise UserError(
                f"task_images={task_images} needs that many distinct images per task but the dataset has "
                f"only {len(dataset)}; lower task_images or raise num_train_images"
            )
        channels, height, _ = dataset.image_shape
        self.views = SSLViews(augment, height, channels)

    def _draw(self, step: int) -> tuple[np.random.Generator, np.ndarray]:
        """The step's generator, after it chose the images ``[B, N]`` of the B tasks."""
        rng = np.random.default_rng([self.seed, step])
        chosen = np.stack(
            [
                rng.choice(len(self.dataset), size=self.task_images, replace=False)
                for _ in range(self.meta_batch)
            ]
        )
        return rng, chosen

    def image_indices(self, step: int) -> np.ndarray:
        """The dataset items ``[B·N]`` meta-batch ``step`` is built from, task-major (what a
        prefetching loader fetches for :meth:`sample`)."""
        return self._draw(step)[1].reshape(-1)

    def sample(
        self,
        step: int,
        device: torch.device | str | None = None,
        images: torch.Tensor | None = None,
    ) -> TaskBatch:
        """Meta-batch number ``step``, a pure function of ``(seed, step)``.

        Views are made on ``device`` when given (else on the CPU) from parameters drawn on the
        CPU, so the device changes where the work runs, not which views are drawn (equal up to
        float rounding; bit-identical between CPU runs). ``image_indices`` stay on the CPU.
        ``images`` are ``dataset.get_batch(image_indices(step))`` when already fetched.
        """
        rng, chosen = self._draw(step)
        if images is None:
            images = self.dataset.get_batch(chosen.reshape(-1))
        if device is not None:
            images = images.to(device, non_blocking=True)
        images = images.reshape(self.meta_batch, self.task_images, *images.shape[1:])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = reconstruct_tasks(
            images, self.views, self.support_views, self.query_views, generator
        )
        return TaskBatch(
            batch.support,
            batch.query,
            batch.task_images,
            batch.support_views,
            batch.query_views,
            torch.from_numpy(chosen),
        )
