import numpy as np
import pytest
import torch

from bmssl.data import SSLViews
from bmssl.data.base import TensorImageDataset
from bmssl.errors import UserError
from bmssl.tasks import TaskSampler, reconstruct_tasks


def _dataset(n: int = 40, size: int = 16) -> TensorImageDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, [i % 4 for i in range(n)], [str(c) for c in range(4)])


def test_reconstruct_layout_and_pseudo_labels():
    images = torch.rand(3, 5, 1, 16, 16)  # B=3 tasks of N=5 images
    batch = reconstruct_tasks(images, SSLViews("none", 16, 1), support_views=2, query_views=3)
    assert batch.support.shape == (3, 10, 1, 16, 16)
    assert batch.query.shape == (3, 15, 1, 16, 16)
    assert batch.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_labels.tolist() == [c for c in range(5) for _ in range(3)]
    # Without augmentation every view is its image: row c·K + k of task b is image (b, c).
    for b in range(3):
        for row, label in enumerate(batch.support_labels.tolist()):
            torch.testing.assert_close(batch.support[b, row], images[b, label])
        for row, label in enumerate(batch.query_labels.tolist()):
            torch.testing.assert_close(batch.query[b, row], images[b, label])
    task = batch[1]
    assert task.support.shape == (10, 1, 16, 16) and task.task_images == 5


def test_augmented_views_differ_but_stay_images():
    images = torch.rand(1, 4, 1, 16, 16)
    batch = reconstruct_tasks(images, SSLViews("strong", 16, 1), support_views=2, query_views=1)
    assert not torch.equal(batch.support[0, 0], batch.support[0, 1])
    assert batch.support.min() >= 0 and batch.support.max() <= 1


def test_sampler_is_deterministic_per_step_and_leaves_global_rng_alone():
    data = _dataset()
    a = TaskSampler(data, 6, 2, 1, meta_batch=3, augment="default", seed=7)
    b = TaskSampler(data, 6, 2, 1, meta_batch=3, augment="default", seed=7)
    before = torch.get_rng_state()
    first = a.sample(5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(10)  # moving the global RNG must not change what a step samples
    again = b.sample(5)
    assert torch.equal(first.support, again.support) and torch.equal(first.query, again.query)
    assert torch.equal(first.image_indices, again.image_indices)
    other = a.sample(6)
    assert not torch.equal(first.support, other.support)
    reseeded = TaskSampler(data, 6, 2, 1, meta_batch=3, augment="default", seed=8).sample(5)
    assert not torch.equal(first.image_indices, reseeded.image_indices)


def test_sampler_draws_distinct_images_per_task():
    data = _dataset()
    batch = TaskSampler(data, 8, 2, 2, meta_batch=4, augment="none", seed=0).sample(0)
    idx = batch.image_indices.numpy()
    assert idx.shape == (4, 8)
    assert all(len(np.unique(row)) == 8 for row in idx)
    # With augmentation off, the views are exactly the chosen dataset images.
    expected = data.get_batch(idx[2])
    torch.testing.assert_close(batch.support[2, ::2], expected)
    torch.testing.assert_close(batch.query[2, 1::2], expected)


def test_sampler_rejects_impossible_tasks():
    with pytest.raises(UserError, match="task_images=50"):
        TaskSampler(_dataset(40), 50, 2, 1, meta_batch=1)
    with pytest.raises(UserError, match="support_views"):
        TaskSampler(_dataset(40), 5, 0, 1, meta_batch=1)


def test_sampler_makes_all_views_in_one_seeded_batched_call():
    """sample(step) = one views.repeat over the B·N chosen images, K+Q views each, parameters
    from a CPU generator seeded from (seed, step); layout class-major."""
    data = _dataset()
    sampler = TaskSampler(data, 4, 2, 3, meta_batch=2, augment="strong", seed=3)
    batch = sampler.sample(9)
    rng = np.random.default_rng([3, 9])
    for _ in range(2):
        rng.choice(len(data), size=4, replace=False)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    images = data.get_batch(batch.image_indices.reshape(-1).numpy())
    views = sampler.views.repeat(images, 5, generator).view(2, 4, 5, 1, 16, 16)
    torch.testing.assert_close(
        batch.support, views[:, :, :2].reshape(2, 8, 1, 16, 16), rtol=0, atol=0
    )
    torch.testing.assert_close(
        batch.query, views[:, :, 2:].reshape(2, 12, 1, 16, 16), rtol=0, atol=0
    )


def test_reconstruct_tasks_with_a_generator_is_repeatable():
    images = torch.rand(2, 3, 1, 16, 16)
    views = SSLViews("affine", 16, 1)
    a = reconstruct_tasks(images, views, 2, 1, torch.Generator().manual_seed(0))
    b = reconstruct_tasks(images, views, 2, 1, torch.Generator().manual_seed(0))
    c = reconstruct_tasks(images, views, 2, 1, torch.Generator().manual_seed(1))
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert not torch.equal(a.support, c.support)


def test_sampler_device_argument():
    data = _dataset()
    sampler = TaskSampler(data, 6, 2, 1, meta_batch=2, augment="default", seed=1)
    here = sampler.sample(4)
    cpu = sampler.sample(4, device="cpu")
    assert torch.equal(here.support, cpu.support) and torch.equal(here.query, cpu.query)
    if torch.cuda.is_available():
        gpu = sampler.sample(4, device="cuda")
        assert gpu.support.device.type == "cuda" and gpu.image_indices.device.type == "cpu"
        diff = (gpu.support.cpu() - here.support).abs()
        assert float((diff > 1e-4).float().mean()) <= 1e-4
