"""SimCLR-style augmentation of image batches (torchvision.transforms.v2), with a strength level.

torchvision's v2 transforms draw one set of random parameters per call, so a batch is augmented
image by image to give every image its own crop, flip and colour change. Randomness comes from
torch's global RNG: seed it (``bmssl.io.seed_everything``) for a repeatable run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from bmssl.errors import check_choice

STRENGTHS = ("none", "weak", "default", "strong", "affine")


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


_LEVELS = {
    "weak": _Level((0.6, 1.0), 0.2, 0.5, 0.0, 0.0, True),
    "default": _Level((0.3, 1.0), 0.4, 0.8, 0.2, 0.0, True),
    "strong": _Level((0.08, 1.0), 0.8, 0.8, 0.2, 0.5, True),
    # Handwriting and strokes: a mirrored or tightly cropped character can be another class,
    # while a slightly rotated, sheared or shifted one is the same.
    "affine": _Level(None, 0.4, 0.8, 0.0, 0.0, False, (15.0, 0.15, (0.8, 1.2), 10.0)),
}


def ssl_transform(strength: str, image_size: int, channels: int) -> v2.Transform:
    """The per-image pipeline of one level: ``none`` is the identity; ``weak`` < ``default`` <
    ``strong`` are SimCLR's crop/flip/colour recipe at rising strength; ``affine`` swaps crops
    and flips for small rotations, shears, shifts and zooms (for digits and strokes)."""
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
        jitter = v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4))
    else:
        jitter = v2.ColorJitter(brightness=j, contrast=j)
    ops.append(v2.RandomApply([jitter], p=level.jitter_p))
    if channels == 3 and level.gray_p > 0:
        ops.append(v2.RandomGrayscale(p=level.gray_p))
    if level.blur_p > 0:
        kernel = max(3, (image_size // 10) | 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=level.blur_p))
    return v2.Compose(ops)


class SSLViews:
    """Callable turning a batch ``[B, C, H, W]`` (float in [0, 1]) into one augmented view of it."""

    def __init__(self, strength: str = "default", image_size: int = 28, channels: int = 1) -> None:
        self.strength = strength
        self.transform = ssl_transform(strength, image_size, channels)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.strength == "none":
            return batch.clone()
        return torch.stack([self.transform(img) for img in batch]).clamp_(0.0, 1.0)

    def pair(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of the same batch (SimCLR's positive pairs)."""
        return self(batch), self(batch)

    def repeat(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` independent views of each image: ``[B, C, H, W] -> [B, n, C, H, W]``."""
        views = torch.stack([self(batch) for _ in range(n)], dim=1)
        return views
