"""Encoders (backbones) and the small heads that self-supervised methods put on top of them.

Example:
    >>> import torch
    >>> backbone, dim = build_encoder("small_cnn")
    >>> backbone(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    True
"""

from __future__ import annotations

from torch import nn

from idaa_transforms.trainers.config import ARCHS

__all__ = ["ARCHS", "build_encoder", "cifar_resnet18", "small_cnn", "mlp_head"]


def cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 images: a 3x3 stride-1 stem, no max-pool, no classifier (512-d)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def small_cnn(width: int = 32) -> nn.Sequential:
    """A four-layer conv net (``8 * width``-d features) that trains at a useful speed on a CPU."""
    layers: list[nn.Module] = []
    channels = 3
    for i, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def build_encoder(arch: str) -> tuple[nn.Module, int]:
    """The backbone named ``arch`` (one of :data:`ARCHS`) and the size of its feature vector."""
    if arch == "resnet18":
        return cifar_resnet18(), 512
    if arch == "small_cnn":
        return small_cnn(), 256
    raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}.")


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear -> BatchNorm -> ReLU -> Linear``: the SimCLR/BYOL projection head and the BYOL predictor."""
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"mlp_head: {name} must be a positive int, got {value!r}.")
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))
