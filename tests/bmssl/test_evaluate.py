import math

import numpy as np
import pytest
import torch
from torch import nn

from bmssl.data import TensorImageDataset, get_dataset
from bmssl.errors import UserError
from bmssl.evaluate import evaluate_fewshot, mean_ci95, sample_episodes


def toy_dataset(classes=6, per_class=20, size=4, seed=0):
    """Class c images are the constant c/classes plus small noise: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(classes).repeat_interleave(per_class).float() / classes
    imgs = base[:, None, None, None] + 0.01 * torch.rand(
        classes * per_class, 1, size, size, generator=g
    )
    onehot = torch.zeros(classes * per_class, 1, size, size)
    imgs = torch.cat([imgs, onehot], 1).clamp(0, 1)
    return TensorImageDataset(
        (imgs * 255).round().to(torch.uint8),
        base.mul(classes).long(),
        [str(c) for c in range(classes)],
    )


class ClassCode(nn.Module):
    """Features that one-hot encode the class from the image mean: a perfect encoder."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        idx = (x[:, 0].mean((1, 2)) * self.classes).round().long().clamp(0, self.classes - 1)
        return torch.nn.functional.one_hot(idx, self.classes).float()


def test_episodes_are_seeded_and_well_formed():
    ds = toy_dataset()
    a = sample_episodes(ds, 5, 2, 3, episodes=4, seed=7)
    b = sample_episodes(ds, 5, 2, 3, episodes=4, seed=7)
    c = sample_episodes(ds, 5, 2, 3, episodes=4, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.support, y.support)
        np.testing.assert_array_equal(x.query, y.query)
    assert any(not np.array_equal(x.support, z.support) for x, z in zip(a, c))
    ep = a[0]
    assert len(ep.support) == 10 and len(ep.query) == 15
    assert set(ep.support).isdisjoint(ep.query)
    targets = np.asarray(ds.targets)
    for lab in range(5):  # every episode label maps to one dataset class
        assert len(set(targets[ep.support[ep.support_labels == lab]])) == 1
        assert set(targets[ep.query[ep.query_labels == lab]]) == set(
            targets[ep.support[ep.support_labels == lab]]
        )


def test_ci_formula():
    acc = [50.0, 60.0, 70.0, 80.0]
    mean, ci = mean_ci95(acc)
    assert mean == 65.0
    assert ci == pytest.approx(1.96 * np.std(acc) / math.sqrt(4))


@pytest.mark.parametrize("classifier", ["proto", "logreg", "finetune"])
def test_perfect_encoder_scores_100(classifier):
    ds = toy_dataset()
    result = evaluate_fewshot(
        ClassCode(6),
        ds,
        5,
        1,
        5,
        episodes=3 if classifier == "finetune" else 20,
        classifier=classifier,
        finetune_steps=30,
        finetune_lr=0.5,
    )
    assert result.mean == pytest.approx(100.0) and result.ci95 == pytest.approx(0.0)


def test_constant_encoder_scores_chance():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(len(x), 3)

    result = evaluate_fewshot(Constant(), toy_dataset(), 5, 1, 5, episodes=50)
    assert result.mean == pytest.approx(20.0)  # argmax ties pick class 0 -> 1/5 correct


def test_same_seed_same_result():
    ds = get_dataset("digits", split="test")
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16))
    r1 = evaluate_fewshot(net, ds, 5, 1, episodes=30, seed=3)
    r2 = evaluate_fewshot(net, ds, 5, 1, episodes=30, seed=3)
    assert r1.accuracies == r2.accuracies


def test_bad_episode_shapes():
    ds = toy_dataset(classes=4, per_class=6)
    with pytest.raises(UserError, match="n_way=5 is larger than the 4 held-out classes"):
        sample_episodes(ds, 5, 1, 1, 1)
    with pytest.raises(UserError, match="k_shot=5 plus n_query=15"):
        sample_episodes(ds, 2, 5, 15, 1)
    with pytest.raises(UserError, match="classifier"):
        evaluate_fewshot(nn.Flatten(), ds, 2, 1, 1, episodes=1, classifier="knn")


def test_track_features_do_not_depend_on_batching_and_batch_policy_is_warned():
    """A class-ordered set embedded class by class: running statistics give the same features
    as one big batch; batch statistics (bn: batch) do not, and are warned about."""
    import warnings

    from bmssl.data import TensorImageDataset
    from bmssl.evaluate import embed_dataset
    from bmssl.nets import build_backbone

    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 1, 16, 16, generator=gen) * 255).to(torch.uint8)
    images[20:] = images[20:] // 2  # the second class is darker: its own batch statistics differ
    data = TensorImageDataset(images, [0] * 20 + [1] * 20, ["a", "b"])
    for policy in ("track", "batch"):
        net = build_backbone("conv4", 1, policy, 4, 16)
        net.train()
        net(data.get_batch(range(40)))  # one training forward: running statistics move
        net.eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            whole = embed_dataset(net, data, batch_size=40)
            by_class = embed_dataset(net, data, batch_size=20)
        same = torch.allclose(whole, by_class, atol=1e-5)
        assert same == (policy == "track")
        assert bool(caught) == (policy == "batch")
