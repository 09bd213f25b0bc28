import pytest
import torch
from torch import nn

from bmssl.errors import UserError
from bmssl.nets import build_backbone, build_encoder


@pytest.mark.parametrize(
    ("name", "size", "channels", "dim"),
    [("conv4", 28, 1, 16), ("conv4", 84, 3, 16 * 25), ("conv5", 84, 3, 16 * 4)],
)
def test_conv_backbones_output_dims(name, size, channels, dim):
    net = build_backbone(name, channels, "track", width=16, image_size=size)
    out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, dim) == (2, net.out_dim)


def test_resnet18_cifar_stem_and_standard_stems():
    net = build_backbone("resnet18-cifar", 3, "batch")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert isinstance(net.maxpool, nn.Identity)
    std = build_backbone("resnet18", 3, "batch")
    assert std.conv1.stride == (2, 2) and isinstance(std.maxpool, nn.MaxPool2d)
    assert std(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert build_backbone("resnet50", 1, "track").out_dim == 2048


def test_registered_backbone_is_buildable():
    from bmssl.nets import backbone_names, register_backbone

    @register_backbone("test-linear")
    def linear(in_channels, bn, width, image_size):
        net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, width))
        net.out_dim = width
        return net

    assert "test-linear" in backbone_names()
    assert build_backbone("test-linear", 1, "none", 5, 8)(torch.zeros(3, 1, 8, 8)).shape == (3, 5)


def test_bn_policies():
    track = build_backbone("conv4", 1, "track", width=8)
    batch = build_backbone("conv4", 1, "batch", width=8)
    none = build_backbone("conv4", 1, "none", width=8)
    assert any(isinstance(m, nn.BatchNorm2d) and m.track_running_stats for m in track.modules())
    # "batch" keeps no buffers, so functional calls never mutate module state
    assert not list(batch.buffers())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in none.modules())
    with pytest.raises(UserError, match="BatchNorm policy"):
        build_backbone("conv4", 1, "sync", width=8)


def test_encoder_embeddings_are_unit_norm():
    enc = build_encoder("conv4", 1, 28, width=8, proj_hidden=16, proj_dim=8)
    z = enc(torch.randn(3, 1, 28, 28))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    assert enc.features(torch.randn(3, 1, 28, 28)).shape == (3, 8)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone("vit", 3)
