"""Backbones and heads: the CIFAR ResNet-18 stem, the small CNN, the projection head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from idaa_transforms.trainers.models import build_encoder, cifar_resnet18, mlp_head


def test_cifar_resnet18_stem():
    net = cifar_resnet18()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 512)


def test_build_encoder_rejects_unknown_arch():
    backbone, dim = build_encoder("small_cnn")
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    with pytest.raises(ValueError, match="arch: expected one of"):
        build_encoder("vit")


def test_mlp_head_shapes_and_errors():
    head = mlp_head(8, 16, 4)
    assert head(torch.rand(3, 8)).shape == (3, 4)
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        mlp_head(8, 0, 4)
