"""SimCLR-style augmentation of image batches, with a strength level, made batch-wide.

Every image of a batch gets its own, independently drawn parameters (crop box, flip, rotation,
colour factors and their order, grayscale, blur), and the whole batch is then transformed with
batched tensor operations on the batch's device (:mod:`bmssl.data.render`, with the colour and
blur ops of :mod:`bmssl.data.photometric`): crop levels resize separably, rows then columns,
with the taps and weights of torch's antialiased bilinear resize, which is exactly
``resized_crop`` followed by the flip; ``affine`` samples with nearest neighbour and zero fill,
which is exactly torchvision's ``RandomAffine``; then colour jitter in each image's own op
order, grayscale and Gaussian blur, each on the images it was drawn for. On the CPU the rows
run in cache-sized blocks (``benchmarks/bench_views.py`` compares the cost with the per-image
path's).

The parameter distributions are those of the per-image torchvision pipeline
(:func:`ssl_transform`, kept as the reference), so given the same parameters the two paths agree
to float rounding (the tests check this level by level). With ``j`` the level's jitter strength,
an image of height ``H``, width ``W`` and output side ``S = image_size``:

- crop: area fraction ``s ~ U(scale)``, aspect ``r = exp(U(log 3/4, log 4/3))``,
  ``w = round(√(sHWr))``, ``h = round(√(sHW/r))``, first of 10 attempts that fits, offsets uniform
  over the integer positions; otherwise the whole image (torchvision's fallback);
- affine: angle ``~ U(±degrees)``, shift ``round(U(±translate·W))`` px (and ``H``), zoom
  ``~ U(scale)``, x-shear ``~ U(±shear)`` degrees; flip with probability 1/2 (crop levels);
- jitter (probability ``jitter_p``): brightness, contrast (and saturation) factors
  ``~ U(max(0, 1−j), 1+j)``, hue shift ``~ U(±min(1/2, j/4))`` (RGB only), order uniform;
- grayscale (RGB) with probability ``gray_p``; blur with probability ``blur_p``, kernel
  ``max(3, (S // 10) | 1)``, ``σ ~ U(0.1, 2.0)``.

Why not kornia.augmentation: it draws its parameters from torch's global RNG (no
``torch.Generator`` argument), on the batch's device, so a view would depend on the device and on
whatever else used the global RNG; its colour ops also differ in detail from torchvision's. Here
every parameter is drawn on the CPU from an explicit generator (:meth:`SSLViews.sample_params`),
then moved to the batch's device: the same seed gives bit-identical views on the CPU, the same
parameters wherever the ops run, and the global RNG is never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from bmssl.data import render
from bmssl.errors import check_choice

STRENGTHS = ("none", "weak", "default", "strong", "affine")

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its whole-image fallback
BLUR_SIGMA = (0.1, 2.0)
# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights.


@dataclass(frozen=True)
class _Level:
    crop_scale: tuple[float, float] | None  # RandomResizedCrop area range; None = no crop
    jitter: float
    jitter_p: float
    gray_p: float
    blur_p: float
    flip: bool
    # RandomAffine (degrees, translate fraction, scale range, shear degrees); None = none
    affine: tuple[float, float, tuple[float, float], float] | None = None

    def __post_init__(self) -> None:
        # One resampling serves both only if they never meet: a crop samples bilinearly inside
        # its box, RandomAffine with nearest neighbour and zero fill.
        if self.crop_scale is not None and self.affine is not None:
            raise ValueError("a level has either a crop or an affine warp, not both")


_LEVELS = {
    "weak": _Level((0.6, 1.0), 0.2, 0.5, 0.0, 0.0, True),
    "default": _Level((0.3, 1.0), 0.4, 0.8, 0.2, 0.0, True),
    "strong": _Level((0.08, 1.0), 0.8, 0.8, 0.2, 0.5, True),
    # Handwriting and strokes: a mirrored or tightly cropped character can be another class,
    # while a slightly rotated, sheared or shifted one is the same.
    "affine": _Level(None, 0.4, 0.8, 0.0, 0.0, False, (15.0, 0.15, (0.8, 1.2), 10.0)),
}


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian-blur kernel side for an image side: ``max(3, (image_size // 10) | 1)``."""
    return max(3, (image_size // 10) | 1)


def _hue_range(jitter: float) -> float:
    """Largest hue shift of a jitter strength: ``min(1/2, j/4)`` of the colour wheel."""
    return min(0.5, jitter / 4)


def ssl_transform(strength: str, image_size: int, channels: int) -> v2.Transform:
    """The per-image pipeline of one level: ``none`` is the identity; ``weak`` < ``default`` <
    ``strong`` are SimCLR's crop/flip/colour recipe at rising strength; ``affine`` swaps crops
    and flips for small rotations, shears, shifts and zooms (for digits and strokes).

    It draws from torch's global RNG, one image per call; :class:`SSLViews` is its batched twin
    and this is the reference it is tested and benchmarked against.
    """
    check_choice("augmentation strength", strength, STRENGTHS)
    if strength == "none":
        return v2.Identity()
    level = _LEVELS[strength]
    ops: list[v2.Transform] = []
    if level.crop_scale is not None:
        ops.append(v2.RandomResizedCrop(image_size, scale=level.crop_scale, antialias=True))
    if level.affine is not None:
        degrees, shift, zoom, shear = level.affine
        ops.append(v2.RandomAffine(degrees, translate=(shift, shift), scale=zoom, shear=shear))
    if level.flip:
        ops.append(v2.RandomHorizontalFlip())
    j = level.jitter
    if channels == 3:
        jitter = v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=_hue_range(j))
    else:
        jitter = v2.ColorJitter(brightness=j, contrast=j)
    ops.append(v2.RandomApply([jitter], p=level.jitter_p))
    if channels == 3 and level.gray_p > 0:
        ops.append(v2.RandomGrayscale(p=level.gray_p))
    if level.blur_p > 0:
        ops.append(
            v2.RandomApply(
                [v2.GaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA)], p=level.blur_p
            )
        )
    return v2.Compose(ops)


@dataclass(frozen=True)
class ViewParams:
    """Random parameters of ``n`` views, row ``i`` for image ``i`` (CPU tensors).

    Fields a level does not use hold the identity (whole-image box, angle 0, scale 1, ...) and
    their flags are False. ``factors`` columns are brightness, contrast, saturation, hue shift;
    ``order[i]`` is the order in which image ``i``'s jitter applies them (column indices; the
    first two only for 1-channel images, which have no saturation or hue).
    """

    crop: torch.Tensor  # [n, 4] int64: top, left, height, width in input pixels
    angle: torch.Tensor  # [n] float64, degrees (counter-clockwise)
    translate: torch.Tensor  # [n, 2] int64, pixels (x, y)
    scale: torch.Tensor  # [n] float64
    shear: torch.Tensor  # [n] float64, x-shear in degrees
    flip: torch.Tensor  # [n] bool
    jitter: torch.Tensor  # [n] bool
    factors: torch.Tensor  # [n, 4] float64
    order: torch.Tensor  # [n, 2 or 4] int64, a permutation per row
    gray: torch.Tensor  # [n] bool
    blur: torch.Tensor  # [n] bool
    sigma: torch.Tensor  # [n] float64

    def __len__(self) -> int:
        return int(self.flip.shape[0])


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """``U(lo, hi)`` in float64, drawn from ``g``."""
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _coin(g: torch.Generator, p: float, n: int) -> torch.Tensor:
    """``n`` Bernoulli(p) flags; ``rand < p`` as torchvision's RandomApply/flip/grayscale."""
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def _sample_crops(
    g: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float]
) -> torch.Tensor:
    """RandomResizedCrop boxes ``[n, 4]`` (top, left, h, w), all attempts drawn at once."""
    target = height * width * _uniform(g, scale[0], scale[1], n, CROP_ATTEMPTS)
    aspect = torch.exp(
        _uniform(g, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), n, CROP_ATTEMPTS)
    )
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(1)
    # A square image's fallback is the whole image (its ratio lies inside CROP_RATIO).
    in_ratio = width / height
    fw, fh = float(width), float(height)
    if in_ratio < CROP_RATIO[0]:
        fh = float(round(fw / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        fw = float(round(fh * CROP_RATIO[1]))
    w = torch.where(found, w.gather(1, first).squeeze(1), fw)
    h = torch.where(found, h.gather(1, first).squeeze(1), fh)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack([top, left, h, w], 1).long()


def _seeded_generator() -> torch.Generator:
    """A CPU generator seeded by one draw from torch's global RNG (``torch.manual_seed`` runs
    stay repeatable, and the global stream advances by one draw per call)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


class SSLViews:
    """Callable turning a batch ``[B, C, H, W]`` (float in [0, 1]) into one augmented view of each
    image, parameters drawn independently per image (see the module docstring for the ranges).

    ``views(batch, generator)``, ``views.pair(batch, generator)`` and
    ``views.repeat(batch, n, generator)`` each draw all their parameters from ``generator`` (a
    CPU ``torch.Generator``) in one go; without one, from a generator seeded by one draw of
    torch's global RNG. Crop levels return ``[B, C, image_size, image_size]``; the others keep
    ``H, W``. The views are on the batch's device, in its dtype, clamped to [0, 1].
    """

    def __init__(self, strength: str = "default", image_size: int = 28, channels: int = 1) -> None:
        self.strength = strength
        self.image_size = image_size
        self.channels = channels
        self.transform = ssl_transform(strength, image_size, channels)  # the per-image reference
        self.level = _LEVELS.get(strength)
        self.blur_kernel = blur_kernel_size(image_size)

    def sample_params(
        self, n: int, generator: torch.Generator, size: tuple[int, int] | None = None
    ) -> ViewParams:
        """Parameters of ``n`` views of images of ``size = (H, W)`` (default ``image_size``²).

        Draws in a fixed order from ``generator`` (CPU), so they are a function of its state.
        """
        if generator.device.type != "cpu":
            raise ValueError(f"views draw on a CPU generator, got one on {generator.device}")
        height, width = size if size is not None else (self.image_size, self.image_size)
        zeros, no = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
        crop = torch.tensor([[0, 0, height, width]]).repeat(n, 1)
        angle, translate, scale, shear = (
            zeros,
            torch.zeros(n, 2, dtype=torch.long),
            zeros + 1,
            zeros,
        )
        flip = jitter = gray = blur = no
        factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64).repeat(n, 1)
        n_ops = 4 if self.channels == 3 else 2
        order = torch.arange(n_ops).repeat(n, 1)
        sigma = zeros + BLUR_SIGMA[0]
        level = self.level
        if level is None:  # "none": nothing to draw
            return ViewParams(crop, angle, translate, scale, shear, flip, jitter, factors, order,
                              gray, blur, sigma)  # fmt: skip
        g = generator
        if level.crop_scale is not None:
            crop = _sample_crops(g, n, height, width, level.crop_scale)
            height = width = self.image_size  # later geometry acts on the resized crop
        if level.affine is not None:
            degrees, shift, zoom, max_shear = level.affine
            angle = _uniform(g, -degrees, degrees, n)
            limit = torch.tensor([shift * width, shift * height], dtype=torch.float64)
            translate = torch.round(_uniform(g, -1.0, 1.0, n, 2) * limit).long()
            scale = _uniform(g, zoom[0], zoom[1], n)
            shear = _uniform(g, -max_shear, max_shear, n)
        if level.flip:
            flip = _coin(g, 0.5, n)
        if level.jitter_p > 0:
            jitter = _coin(g, level.jitter_p, n)
            j = level.jitter
            lo_hi = [(max(0.0, 1 - j), 1 + j)] * 3 + [(-_hue_range(j), _hue_range(j))]
            factors = torch.stack([_uniform(g, lo, hi, n) for lo, hi in lo_hi[:n_ops]], 1)
            if n_ops == 2:  # no saturation or hue for 1-channel images
                factors = torch.cat([factors, torch.tensor([[1.0, 0.0]]).repeat(n, 1)], 1)
            order = torch.rand(n, n_ops, generator=g).argsort(1)  # uniform permutations
        if self.channels == 3 and level.gray_p > 0:
            gray = _coin(g, level.gray_p, n)
        if level.blur_p > 0:
            blur = _coin(g, level.blur_p, n)
            sigma = _uniform(g, BLUR_SIGMA[0], BLUR_SIGMA[1], n)
        return ViewParams(crop, angle, translate, scale, shear, flip, jitter, factors, order,
                          gray, blur, sigma)  # fmt: skip

    def apply(self, batch: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Views of ``batch [B, C, H, W]`` with given parameters (``len(params) == B``)."""
        if batch.dim() != 4 or len(params) != batch.shape[0]:
            raise ValueError(
                f"batch must be [B, C, H, W] with B = {len(params)} parameter rows, "
                f"got {tuple(batch.shape)}"
            )
        if not batch.is_floating_point():
            raise TypeError(f"views need float images in [0, 1], got {batch.dtype}")
        if self.level is None or batch.shape[0] == 0:
            return batch.clone()
        crop = self.image_size if self.level.crop_scale is not None else None
        return render.render(
            batch.contiguous(), params, crop, self.blur_kernel, self.level.blur_p > 0
        )

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One view per image of ``batch [B, C, H, W]``."""
        if self.level is None:
            return batch.clone()
        g = generator if generator is not None else _seeded_generator()
        params = self.sample_params(batch.shape[0], g, (batch.shape[-2], batch.shape[-1]))
        return self.apply(batch, params)

    def pair(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of the same batch (SimCLR's positive pairs), one batched call."""
        first, second = self(torch.cat([batch, batch]), generator).chunk(2)
        return first, second

    def repeat(
        self, batch: torch.Tensor, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` independent views of each image: ``[B, C, H, W] -> [B, n, C, H, W]``, one call.

        Row ``i·n + v`` of the underlying batch is view ``v`` of image ``i``.
        """
        views = self(batch.repeat_interleave(n, dim=0), generator)
        return views.view(batch.shape[0], n, *views.shape[1:])
