import math

import pytest
import torch
import torch.nn.functional as F

from bmssl.errors import UserError
from bmssl.losses import kl_matching, nt_xent, prototype_cross_entropy, prototype_logits, prototypes


def slow_nt_xent(z1, z2, t):
    """Textbook loop: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), averaged over 2B anchors."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_loop_reference(t):
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(slow_nt_xent(z1, z2, t), rel=1e-10)


def test_nt_xent_is_low_for_identical_views_and_symmetric():
    z = torch.randn(8, 16, dtype=torch.float64)
    assert float(nt_xent(z, z, 0.1)) < float(
        nt_xent(z, torch.randn(8, 16, dtype=torch.float64), 0.1)
    )
    z2 = torch.randn(8, 16, dtype=torch.float64)
    assert float(nt_xent(z, z2)) == pytest.approx(float(nt_xent(z2, z)), rel=1e-12)


def test_nt_xent_rejects_non_positive_temperature():
    with pytest.raises(UserError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)


def test_prototypes_are_normalised_class_means():
    support = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    protos = prototypes(support, labels, 3)
    for c in range(3):
        expected = F.normalize(support[labels == c].mean(0), dim=0)
        torch.testing.assert_close(protos[c], expected)


def test_prototype_cross_entropy_matches_loop():
    s, q = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    sy, qy = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 1, 0])
    tau = 0.3
    sn = F.normalize(s, dim=-1)
    protos = [F.normalize(sn[sy == c].mean(0), dim=0) for c in range(3)]
    expected = 0.0
    for i in range(5):
        qi = F.normalize(q[i], dim=0)
        logits = [float(qi @ p) / tau for p in protos]
        expected += -logits[int(qy[i])] + math.log(sum(math.exp(v) for v in logits))
    got = prototype_cross_entropy(s, sy, q, qy, 3, tau)
    assert float(got) == pytest.approx(expected / 5, rel=1e-10)
    assert prototype_logits(s, sy, q, 3, tau).shape == (5, 3)


def test_kl_matching_zero_at_equality_and_matches_definition():
    a = torch.randn(4, 5, dtype=torch.float64)
    assert float(kl_matching(a, a.clone())) == pytest.approx(0.0, abs=1e-12)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    p, q = a.softmax(-1), b.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    got = kl_matching(a, b)
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
    got.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()
    assert float(kl_matching(a, b.detach())) >= 0
