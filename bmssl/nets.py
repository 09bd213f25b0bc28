"""Backbones (Conv4, Conv5, torchvision's ResNet-18/50, ResNet-18 with a CIFAR stem) and
projector heads; more backbones register with :func:`register_backbone`.

Every backbone maps ``[B, C, H, W]`` images to ``[B, out_dim]`` features and carries ``out_dim``.
BatchNorm follows a policy because functional (torch.func / higher) inner loops need it explicit:

- ``"track"``: ordinary BatchNorm with running statistics (eval mode uses them);
- ``"batch"``: BatchNorm that always normalises with the current batch's statistics and keeps no
  buffers, so a functional call never mutates module state;
- ``"none"``: no normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bmssl.errors import UserError, check_choice

BNPolicy = Literal["track", "batch", "none"]
BN_POLICIES = ("track", "batch", "none")
#: ``builder(in_channels, bn, width, image_size) -> module`` with an ``out_dim`` attribute
BackboneBuilder = Callable[[int, BNPolicy, int, int], nn.Module]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(in_channels, bn, width, image_size)`` as backbone ``name``.

    The module it returns maps ``[B, C, H, W]`` to ``[B, out_dim]`` and sets ``out_dim``; its
    normalisation layers should follow ``bn`` (use :func:`norm_layer`).
    """

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[name] = builder
        return builder

    return decorate


def backbone_names() -> tuple[str, ...]:
    """Every registered backbone name (plugins included)."""
    from bmssl.plugins import load_plugins

    load_plugins()
    return tuple(_BACKBONES)


def norm_layer(channels: int, policy: BNPolicy, dims: int = 2) -> nn.Module:
    """The normalisation layer ``policy`` asks for, over ``channels`` features."""
    check_choice("BatchNorm policy", policy, BN_POLICIES)
    if policy == "none":
        return nn.Identity()
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(channels, track_running_stats=(policy == "track"))


def conv_block(in_ch: int, out_ch: int, bn: BNPolicy, pool: bool = True) -> nn.Sequential:
    """conv3x3 -> norm -> ReLU -> (maxpool 2)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=(bn == "none")),
        norm_layer(out_ch, bn),
        nn.ReLU(inplace=False),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """``depth`` conv blocks of ``width`` channels, flattened: Conv4 (depth 4) and Conv5 (depth 5).

    At 28×28 Conv4 gives ``width`` features (28→14→7→3→1); at 84×84 Conv4 gives ``25·width``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        depth: int = 4,
        bn: BNPolicy = "track",
        image_size: int = 28,
    ) -> None:
        super().__init__()
        blocks = [conv_block(in_channels if i == 0 else width, width, bn) for i in range(depth)]
        self.features = nn.Sequential(*blocks)
        side = image_size
        for _ in range(depth):
            side //= 2
        if side < 1:
            raise UserError(
                f"image_size={image_size} is too small for {depth} pooling blocks of "
                f"conv{depth}; use image_size >= {2**depth}"
            )
        self.out_dim = width * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def _torchvision_resnet(depth: int, in_channels: int, bn: BNPolicy, small_stem: bool) -> nn.Module:
    from torchvision.models import resnet18, resnet50

    model = (resnet18 if depth == 18 else resnet50)(norm_layer=lambda c: norm_layer(c, bn))
    if small_stem:
        # Small images: a 3×3 stride-1 stem and no max-pool, as in SimCLR's CIFAR variant.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.out_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


@register_backbone("conv4")
def _conv4(in_channels: int, bn: BNPolicy, width: int, image_size: int) -> nn.Module:
    return ConvNet(in_channels, width, 4, bn, image_size)


@register_backbone("conv5")
def _conv5(in_channels: int, bn: BNPolicy, width: int, image_size: int) -> nn.Module:
    return ConvNet(in_channels, width, 5, bn, image_size)


@register_backbone("resnet18")
def _resnet18(in_channels: int, bn: BNPolicy, width: int, image_size: int) -> nn.Module:
    """torchvision's ResNet-18 (standard 7×7 stride-2 stem and max-pool, as the public BiSSL
    code uses); ``width`` is ignored."""
    return _torchvision_resnet(18, in_channels, bn, small_stem=False)


@register_backbone("resnet50")
def _resnet50(in_channels: int, bn: BNPolicy, width: int, image_size: int) -> nn.Module:
    """torchvision's ResNet-50 (standard stem; 2048 features); ``width`` is ignored."""
    return _torchvision_resnet(50, in_channels, bn, small_stem=False)


@register_backbone("resnet18-cifar")
def _resnet18_cifar(in_channels: int, bn: BNPolicy, width: int, image_size: int) -> nn.Module:
    """ResNet-18 with SimCLR's small-image stem (3×3 stride 1, no max-pool): for 32-px images;
    at 96 px it costs about 15× the standard stem's MACs."""
    return _torchvision_resnet(18, in_channels, bn, small_stem=True)


def build_backbone(
    name: str, in_channels: int = 3, bn: BNPolicy = "track", width: int = 64, image_size: int = 28
) -> nn.Module:
    """Backbone by registered name (see :func:`backbone_names`)."""
    check_choice("backbone", name, backbone_names())
    return _BACKBONES[name](in_channels, bn, width, image_size)


class Projector(nn.Module):
    """MLP head ``in_dim -> hidden -> out_dim`` (Linear, norm, ReLU, Linear), SimCLR style."""

    def __init__(
        self, in_dim: int, hidden: int = 128, out_dim: int = 64, bn: BNPolicy = "track"
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=(bn == "none")),
            norm_layer(hidden, bn, dims=1),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class Encoder(nn.Module):
    """Backbone followed by a projector; ``forward`` returns L2-normalised embeddings ``[B, D]``."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[B, F]`` (what few-shot evaluation uses)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=-1)


def build_encoder(
    backbone: str = "conv4",
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 64,
    bn: BNPolicy = "track",
    proj_hidden: int = 128,
    proj_dim: int = 64,
) -> Encoder:
    """Backbone + projector with consistent BatchNorm policy."""
    net = build_backbone(backbone, in_channels, bn, width, image_size)
    out_dim: int = net.out_dim  # type: ignore[assignment]
    return Encoder(net, Projector(out_dim, proj_hidden, proj_dim, bn))
