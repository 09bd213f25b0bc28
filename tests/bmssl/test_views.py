"""Batched SSL views: parameter ranges per level, per-image independence, determinism, and
agreement with the per-image torchvision pipeline given the same parameters."""

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from bmssl.data import SSLViews, colour_kernels, photometric, render, ssl_transform
from bmssl.data.views import _LEVELS, STRENGTHS, ViewParams
from bmssl.errors import UserError

AUGMENTED = ("weak", "default", "strong", "affine")
SHAPES = ((28, 1), (84, 3))


@pytest.fixture(params=["fused", "torch"])
def colour_path(request, monkeypatch) -> str:
    """Both implementations of the colour ops: the fused CPU kernels and the torch ops (what
    other devices run)."""
    if request.param == "torch":
        monkeypatch.setattr(colour_kernels, "usable", lambda x: False)
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=_gen(seed))


def _reference(views: SSLViews, batch: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Today's per-image pipeline (torchvision functional ops in ssl_transform's order) run with
    the parameters the batched path drew."""
    level = _LEVELS[views.strength]
    jitter_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for i, x in enumerate(batch):
        if level.crop_scale is not None:
            top, left, h, w = p.crop[i].tolist()
            x = TF.resized_crop(x, top, left, h, w, [views.image_size] * 2, antialias=True)
        if level.affine is not None:
            x = TF.affine(
                x,
                angle=float(p.angle[i]),
                translate=p.translate[i].tolist(),
                scale=float(p.scale[i]),
                shear=[float(p.shear[i]), 0.0],
                interpolation=v2.InterpolationMode.NEAREST,
                fill=0,
            )
        if p.flip[i]:
            x = TF.horizontal_flip(x)
        if p.jitter[i]:
            for k in p.order[i].tolist():
                x = jitter_ops[k](x, float(p.factors[i, k]))
        if p.gray[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if p.blur[i]:
            sigma = float(p.sigma[i])
            x = TF.gaussian_blur(x, [views.blur_kernel] * 2, [sigma, sigma])
        out.append(x)
    return torch.stack(out).clamp(0.0, 1.0)


@pytest.mark.parametrize("strength", AUGMENTED)
@pytest.mark.parametrize(("size", "channels"), SHAPES)
def test_batched_views_equal_the_per_image_pipeline_given_the_same_parameters(
    strength, size, channels, colour_path
):
    views = SSLViews(strength, size, channels)
    batch = _images(24, channels, size)
    params = views.sample_params(len(batch), _gen(3))
    got = views.apply(batch, params)
    want = _reference(views, batch, params)
    diff = (got - want).abs()
    # Float rounding only; `affine` samples nearest-neighbour, where a coordinate within
    # rounding of a pixel edge may pick the other pixel (rare: allow 1 in 10^4 values).
    assert float((diff > 1e-4).float().mean()) <= 1e-4
    assert float(diff.median()) < 1e-6


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize(("size", "channels"), SHAPES)
def test_shape_dtype_range_and_determinism(strength, size, channels):
    views = SSLViews(strength, size, channels)
    batch = _images(16, channels, size)
    for dtype in (torch.float32, torch.float64):
        x = batch.to(dtype)
        a = views(x, _gen(5))
        assert a.shape == x.shape and a.dtype == dtype
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert torch.equal(a, views(x, _gen(5)))  # same seed: bit-identical
        if strength != "none":
            assert not torch.equal(a, views(x, _gen(6)))  # another seed: other views
    assert torch.equal(batch, _images(16, channels, size))  # input untouched


def test_none_is_the_identity_and_draws_nothing():
    views = SSLViews("none", 28, 1)
    batch = _images(4, 1, 28)
    g = _gen(0)
    state = g.get_state()
    out = views(batch, g)
    assert torch.equal(out, batch) and out.data_ptr() != batch.data_ptr()
    assert torch.equal(g.get_state(), state)
    first, second = views.pair(batch)
    assert torch.equal(first, batch) and torch.equal(second, batch)
    assert torch.equal(views.repeat(batch, 3)[:, 2], batch)


@pytest.mark.parametrize("strength", AUGMENTED)
def test_every_image_gets_its_own_parameters_and_view(strength):
    views = SSLViews(strength, 28, 3)
    p = views.sample_params(64, _gen(1))
    if _LEVELS[strength].crop_scale is not None:
        assert len({tuple(box) for box in p.crop.tolist()}) > 32
        assert 0 < int(p.flip.sum()) < 64
    else:
        assert len(set(p.angle.tolist())) == 64 and len(set(p.shear.tolist())) == 64
    assert len(set(p.factors[:, 0].tolist())) == 64
    # Identical input images still give pairwise different views.
    image = _images(1, 3, 28)
    out = views(image.expand(16, -1, -1, -1).contiguous(), _gen(2))
    flat = out.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(16)).min() > 0


def _assert_uniform(x: torch.Tensor, lo: float, hi: float, slack: float = 0.0) -> None:
    """Within ``[lo, hi]`` (± slack) and reaching both ends (1% of the range)."""
    assert float(x.min()) >= lo - slack and float(x.max()) <= hi + slack
    assert float(x.min()) <= lo + 0.01 * (hi - lo) + slack
    assert float(x.max()) >= hi - 0.01 * (hi - lo) - slack


def _assert_rate(flags: torch.Tensor, p: float) -> None:
    # n = 20000 draws: the standard error is at most 0.0036; 0.02 is over 5 of them.
    assert abs(float(flags.double().mean()) - p) < 0.02


@pytest.mark.parametrize("strength", AUGMENTED)
@pytest.mark.parametrize("channels", (1, 3))
def test_parameter_ranges_follow_the_level_definitions(strength, channels):
    size, n = 84, 20000
    level = _LEVELS[strength]
    views = SSLViews(strength, size, channels)
    p = views.sample_params(n, _gen(11))
    top, left, h, w = p.crop.double().unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= size) & (left + w <= size)).all())
    if level.crop_scale is not None:
        # Sides are rounded to whole pixels: area and ratio are exact up to that rounding.
        area, ratio = h * w / size**2, w / h
        side = 0.5 / (size * math.sqrt(level.crop_scale[0]))  # relative error of a rounded side
        _assert_uniform(area, *level.crop_scale, slack=3 * side)
        _assert_uniform(ratio, 3 / 4, 4 / 3, slack=3 * side * 4 / 3)
        _assert_rate(p.flip, 0.5)
    else:
        assert bool((p.crop == torch.tensor([0, 0, size, size])).all())
        assert not bool(p.flip.any())
    if level.affine is not None:
        degrees, shift, zoom, shear = level.affine
        _assert_uniform(p.angle, -degrees, degrees)
        _assert_uniform(p.scale, *zoom)
        _assert_uniform(p.shear, -shear, shear)
        most = round(shift * size)  # round(U(±0.15·84)) = round(U(±12.6)) ∈ [−13, 13]
        assert p.translate.abs().max() == most and p.translate.min() == -most
        assert p.translate.dtype == torch.long
    else:
        assert not bool(p.angle.any() or p.translate.any() or p.shear.any())
        assert bool((p.scale == 1).all())
    j = level.jitter
    _assert_rate(p.jitter, level.jitter_p)
    _assert_uniform(p.factors[:, 0], max(0.0, 1 - j), 1 + j)
    _assert_uniform(p.factors[:, 1], max(0.0, 1 - j), 1 + j)
    assert p.order.shape == (n, 4 if channels == 3 else 2)
    assert bool((p.order.sort(1).values == torch.arange(p.order.shape[1])).all())
    for op in range(p.order.shape[1]):  # each op first in 1/n_ops of the orders
        _assert_rate(p.order[:, 0] == op, 1 / p.order.shape[1])
    if channels == 3:
        _assert_uniform(p.factors[:, 2], max(0.0, 1 - j), 1 + j)
        _assert_uniform(p.factors[:, 3], -min(0.5, j / 4), min(0.5, j / 4))
        _assert_rate(p.gray, level.gray_p)
    else:
        assert bool((p.factors[:, 2] == 1).all() and (p.factors[:, 3] == 0).all())
        assert not bool(p.gray.any())
    _assert_rate(p.blur, level.blur_p)
    if level.blur_p > 0:
        _assert_uniform(p.sigma, 0.1, 2.0)


def test_blur_kernel_follows_the_image_size():
    assert SSLViews("strong", 28, 1).blur_kernel == 3
    assert SSLViews("strong", 84, 3).blur_kernel == 9
    assert SSLViews("strong", 224, 3).blur_kernel == 23


def test_pair_and_repeat_are_one_batched_call():
    views = SSLViews("default", 28, 3)
    batch = _images(5, 3, 28)
    first, second = views.pair(batch, _gen(4))
    both = views(torch.cat([batch, batch]), _gen(4))
    assert torch.equal(first, both[:5]) and torch.equal(second, both[5:])
    assert not torch.equal(first, second)
    rep = views.repeat(batch, 3, _gen(4))
    assert rep.shape == (5, 3, 3, 28, 28)
    flat = views(batch.repeat_interleave(3, dim=0), _gen(4))
    assert torch.equal(rep, flat.view(5, 3, 3, 28, 28))


def test_generator_none_draws_once_from_the_global_rng():
    views = SSLViews("strong", 28, 3)
    batch = _images(6, 3, 28)
    torch.manual_seed(123)
    a = views(batch)
    after_views = torch.rand(3)
    torch.manual_seed(123)
    b = views(batch)
    assert torch.equal(a, b)  # repeatable under torch.manual_seed
    torch.manual_seed(123)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    assert torch.equal(torch.rand(3), after_views)  # exactly one draw
    assert torch.equal(a, views(batch, _gen(seed)))


def test_an_explicit_generator_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    SSLViews("strong", 28, 3).pair(_images(4, 3, 28), _gen(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_errors():
    with pytest.raises(UserError, match="augmentation strength"):
        SSLViews("heavy", 28, 1)
    with pytest.raises(UserError, match="augmentation strength"):
        ssl_transform("heavy", 28, 1)
    views = SSLViews("weak", 28, 1)
    with pytest.raises(ValueError, match="parameter rows"):
        views.apply(_images(3, 1, 28), views.sample_params(2, _gen(0)))


def test_per_image_reference_pipeline_still_works():
    torch.manual_seed(0)
    out = ssl_transform("strong", 84, 3)(_images(1, 3, 84)[0])
    assert out.shape == (3, 84, 84)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strength", AUGMENTED)
@pytest.mark.parametrize(("size", "channels"), SHAPES)
def test_cuda_views_equal_cpu_views(strength, size, channels):
    views = SSLViews(strength, size, channels)
    batch = _images(64, channels, size)
    cpu = views(batch, _gen(9))
    gpu = views(batch.cuda(), _gen(9))
    assert gpu.device.type == "cuda"
    diff = (gpu.cpu() - cpu).abs()
    # Same parameters; kernels round differently (and nearest may flip at a pixel edge).
    assert float((diff > 1e-4).float().mean()) <= 1e-4
    assert float(diff.median()) < 1e-6


def test_blocks_do_not_change_the_views(monkeypatch):
    """The rows are rendered in blocks (cut to fit the CPU caches); any cut gives the same views."""
    views = SSLViews("strong", 28, 3)
    batch = _images(60, 3, 28)
    params = views.sample_params(60, _gen(8))
    whole = views.apply(batch, params)
    monkeypatch.setattr(render, "CPU_BLOCK", 3)
    assert torch.equal(views.apply(batch, params), whole)


@pytest.mark.parametrize(("strength", "channels"), (("strong", 3), ("default", 1), ("affine", 1)))
def test_rectangular_images_equal_the_per_image_pipeline(strength, channels):
    views = SSLViews(strength, 28, channels)
    batch = torch.rand(12, channels, 30, 41, generator=_gen(4))
    params = views.sample_params(12, _gen(5), (30, 41))
    got = views.apply(batch, params)
    want = _reference(views, batch, params)
    assert (
        got.shape == want.shape == ((12, channels, 28, 28) if strength != "affine" else batch.shape)
    )
    diff = (got - want).abs()
    assert float((diff > 1e-4).float().mean()) <= 1e-4 and float(diff.median()) < 1e-6


def test_hue_rotation_equals_torchvision_on_gray_tied_and_pure_pixels(colour_path):
    """Gray pixels (no hue), ties between the largest channels (torchvision's r > g > b
    precedence), pure and random colours, rotated by shifts up to half a turn either way."""
    corners = torch.tensor(
        [[0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1],
         [0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7], [0, 0, 0], [1, 1, 1]]
    )  # fmt: skip
    pixels = torch.cat([corners, torch.rand(52, 3, generator=_gen(6))]).T.reshape(3, 8, 8)
    shifts = (-0.5, -0.31, -0.2, -1e-3, 0.0, 0.05, 0.2, 0.5)
    x = pixels.expand(len(shifts), -1, -1, -1).contiguous()
    offsets = photometric.hue_offsets(torch.tensor(shifts)).float().view(-1, 3, 1, 1)
    photometric.hue_(x, offsets)
    for i, shift in enumerate(shifts):
        assert (x[i] - TF.adjust_hue(pixels, shift)).abs().max() < 2e-6, shift
