"""The fused CPU colour kernels against the torch ops they replace (float rounding apart)."""

from __future__ import annotations

import pytest
import torch

from bmssl.data import colour_kernels, photometric


def _torch_path(op, *args) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(colour_kernels, "usable", lambda x: False)
        op(*args)


def _block(m: int, channels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, channels, 9, 13, generator=g)
    if channels == 3:
        x[:, :, 0] = x[:, :1, 0]  # gray pixels: d = 0
        x[:, 1, 1] = x[:, 0, 1]  # r = g ties
        x[:, 2, 2] = x[:, 1, 2]  # g = b ties
        x[:, :, 3, :3] = torch.tensor([0.0, 1.0, 0.5])[:, None]  # saturated channels
    return x


@pytest.mark.parametrize("m", [1, 5, 24])
def test_hue_kernel_equals_the_torch_ops(m: int) -> None:
    x = _block(m, 3, seed=m)
    turns = torch.linspace(-0.5, 0.5, m)
    offsets = photometric.hue_offsets(turns).float().view(m, 3, 1, 1)
    fused, reference = x.clone(), x.clone()
    photometric.hue_(fused, offsets)
    _torch_path(photometric.hue_, reference, offsets)
    assert (fused - reference).abs().max() < 2e-6
    gray = x[:, 0, 0] == x[:, 1, 0]
    assert torch.equal(fused[:, :, 0][gray[:, None].expand(-1, 3, -1)],
                       x[:, :, 0][gray[:, None].expand(-1, 3, -1)])  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shifted", [False, True])
def test_scale_shift_kernel_equals_the_torch_ops(channels: int, shifted: bool) -> None:
    m = 7
    x = _block(m, channels, seed=11)
    g = torch.Generator().manual_seed(1)
    f = torch.rand(m, 1, 1, 1, generator=g) * 1.8
    shift = (torch.rand(m, 1, 1, 1, generator=g) - 0.5) if shifted else None
    fused, reference = x.clone(), x.clone()
    colour_kernels.scale_shift_(fused, f, shift)  # called directly: the block is below the size
    _torch_path(photometric.scale_shift_, reference, f, shift)  # where photometric would
    assert torch.equal(fused, reference)  # one multiply, one add, one clamp: no rounding apart
    assert fused.min() >= 0.0 and fused.max() <= 1.0


def test_kernels_take_only_contiguous_float32_cpu_tensors_outside_autograd() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert colour_kernels.usable(x)
    assert not colour_kernels.usable(x.double())
    assert not colour_kernels.usable(x.transpose(2, 3))
    assert not colour_kernels.usable(x.clone().requires_grad_())


def test_an_empty_block_is_left_alone() -> None:
    x = torch.rand(0, 3, 4, 4)
    colour_kernels.hue_(x, torch.zeros(0, 3, 1, 1))
    colour_kernels.scale_shift_(x, torch.ones(0, 1, 1, 1), None)
    assert x.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("strength", ["weak", "default", "strong", "affine"])
def test_one_channel_views_are_bit_identical_on_both_paths(strength: str, monkeypatch) -> None:
    """Gray images take brightness and contrast only, where the kernel does the torch ops'
    arithmetic exactly: 1-channel views (every CPU table) do not depend on the path."""
    from bmssl.data import SSLViews

    views = SSLViews(strength, 84, 1)
    batch = torch.rand(40, 1, 84, 84, generator=torch.Generator().manual_seed(2))
    params = views.sample_params(40, torch.Generator().manual_seed(3))
    calls = []
    kernel = colour_kernels.scale_shift_
    monkeypatch.setattr(colour_kernels, "scale_shift_", lambda *a: calls.append(1) or kernel(*a))
    fused = views.apply(batch, params)
    assert calls  # 84-px blocks are large enough for the kernel
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(colour_kernels, "usable", lambda x: False)
        reference = views.apply(batch, params)
    assert torch.equal(fused, reference)
