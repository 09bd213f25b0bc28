import hashlib

import numpy as np
import pytest
import torch

from bmssl.data import SSLViews, get_dataset, list_datasets
from bmssl.data.offline import generate_glyphs
from bmssl.errors import DataNotFoundError, UserError


def test_glyphs_same_seed_same_bytes_other_seed_differs():
    a, la = generate_glyphs(num_classes=12, per_class=5, seed=3)
    b, lb = generate_glyphs(num_classes=12, per_class=5, seed=3)
    c, _ = generate_glyphs(num_classes=12, per_class=5, seed=4)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    assert not np.array_equal(a, c)
    assert a.shape == (60, 1, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(la, np.repeat(np.arange(12), 5))
    assert a.max() == 255 and a.min() == 0  # strokes are drawn, background is black


def test_glyph_classes_are_distinct_and_consistent():
    """Images of one class are nearer each other than to other classes (a learnable set)."""
    images, labels = generate_glyphs(num_classes=30, per_class=6, seed=0)
    x = torch.from_numpy(images.reshape(len(images), -1)).float()
    x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    sim = x @ x.T
    same = torch.from_numpy(labels[:, None] == labels[None, :])
    eye = torch.eye(len(x), dtype=torch.bool)
    assert sim[same & ~eye].mean() > sim[~same].mean() + 0.2


def test_fewshot_splits_are_class_disjoint():
    sizes = {}
    names = {}
    for split in ("train", "val", "test"):
        ds = get_dataset("glyphs", split=split)
        sizes[split] = ds.num_classes
        names[split] = set(ds.classes)
        assert len(ds) == 20 * ds.num_classes
        assert sorted(set(ds.targets)) == list(range(ds.num_classes))
    assert sizes == {"train": 384, "val": 96, "test": 120}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])


def test_digits_splits_and_images():
    train, val, test = (get_dataset("digits", split=s) for s in ("train", "val", "test"))
    assert train.classes == ["0", "1", "2", "3", "4"] and test.classes == ["5", "6", "7", "8", "9"]
    assert len(train) + len(val) + len(test) == 1797
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    batch = test.get_batch([0, 1, 2])
    torch.testing.assert_close(batch[0], x)


def test_supervised_protocol_keeps_classes_and_divides_images():
    tr = get_dataset("digits", split="train", protocol="supervised")
    te = get_dataset("digits", split="test", protocol="supervised")
    assert tr.num_classes == te.num_classes == 10
    assert set(tr.indices.tolist()).isdisjoint(te.indices.tolist())


def test_registry_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        get_dataset("nope")
    with pytest.raises(UserError, match="split"):
        get_dataset("digits", split="holdout")
    with pytest.raises(DataNotFoundError, match="omniglot"):
        get_dataset("omniglot", root="/nonexistent/omniglot")
    assert "glyphs" in list_datasets() and "imagefolder:<path>" in list_datasets()


@pytest.mark.parametrize("strength", ["weak", "default", "strong", "affine"])
def test_views_are_per_image_random_and_seeded(strength):
    batch = get_dataset("glyphs", split="train").get_batch(range(8))
    views = SSLViews(strength, 28, 1)
    torch.manual_seed(1)
    a = views(batch)
    torch.manual_seed(1)
    b = views(batch)
    torch.testing.assert_close(a, b)
    assert a.shape == batch.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, batch)
    c = views(batch)
    assert not torch.equal(a, c)
    assert views.repeat(batch[:3], 4).shape == (3, 4, 1, 28, 28)


def test_affine_views_keep_size_and_orientation():
    """``affine`` never mirrors: with colour jitter off, a view of a left-heavy image stays
    left-heavy (a mirror would move the mass right)."""
    image = torch.zeros(1, 1, 28, 28)
    image[..., 4:24, 2:8] = 1.0  # a bar near the left edge
    views = SSLViews("affine", 28, 1)
    views.transform.transforms[-1].p = 0.0  # no jitter: geometry only
    torch.manual_seed(0)
    out = views(image.repeat(64, 1, 1, 1))
    columns = torch.arange(28.0)
    centre = (out.sum(dim=(1, 2)) * columns).sum(-1) / out.sum(dim=(1, 2, 3))
    assert out.shape == (64, 1, 28, 28) and bool((centre < 12).all())
    assert len({tuple(v.flatten().tolist()) for v in out}) == 64  # per-image parameters


def test_rgb_views_and_identity():
    batch = torch.rand(4, 3, 32, 32)
    assert SSLViews("strong", 32, 3)(batch).shape == batch.shape
    torch.testing.assert_close(SSLViews("none", 32, 3)(batch), batch)
    with pytest.raises(UserError, match="augmentation strength"):
        SSLViews("extreme")


def test_unlabeled_protocol_pools_every_image():
    digits = get_dataset("digits", protocol="unlabeled")
    assert len(digits) == 1797 and digits.num_classes == 10
    glyphs = get_dataset("glyphs", protocol="unlabeled", num_classes=10, per_class=3)
    assert len(glyphs) == 30 and glyphs.num_classes == 10
    with pytest.raises(UserError, match="split='train'"):
        get_dataset("digits", split="test", protocol="unlabeled")
