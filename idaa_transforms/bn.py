"""Separate "adversarial" BatchNorms, as in AdvProp (Xie et al., 2020) and the IDAA ResNet-18.

Adversarial views have different statistics from clean ones; giving them their own BatchNorm keeps them from
shifting the statistics that the clean views (and evaluation) use. :func:`convert_to_dual_bn` replaces every BatchNorm
of a model by a :class:`DualBatchNorm` holding a clean and an adversarial copy, and forwards run through the
adversarial copies only inside :func:`adversarial_bn`. The routing is a context variable: no module is modified to
switch it, so it is safe inside other people's forward passes and across threads.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DualBatchNorm", "convert_to_dual_bn", "adversarial_bn"]

_ROUTE_ADVERSARIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("idaa_adversarial_bn", default=False)


class DualBatchNorm(nn.Module):
    """A clean and an adversarial BatchNorm behind one module; which one runs depends on :func:`adversarial_bn`.

    Args:
        norm: the BatchNorm to split; it becomes ``clean`` and a deep copy becomes ``adversarial``.
        adversarial_momentum: running-statistics momentum of the adversarial copy (``None`` keeps ``norm``'s).
    """

    def __init__(self, norm: _BatchNorm, adversarial_momentum: float | None = None) -> None:
        super().__init__()
        self.clean = norm
        self.adversarial = copy.deepcopy(norm)
        if adversarial_momentum is not None:
            self.adversarial.momentum = adversarial_momentum

    def forward(self, x: Tensor) -> Tensor:
        return (self.adversarial if _ROUTE_ADVERSARIAL.get() else self.clean)(x)


def convert_to_dual_bn(module: nn.Module, adversarial_momentum: float | None = None) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a :class:`DualBatchNorm`, in place; returns the module.

    Example:
        >>> net = convert_to_dual_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
        >>> type(net[1]).__name__
        'DualBatchNorm'
    """
    if isinstance(module, _BatchNorm):
        return DualBatchNorm(module, adversarial_momentum)
    for name, child in module.named_children():
        if not isinstance(child, DualBatchNorm):
            setattr(module, name, convert_to_dual_bn(child, adversarial_momentum))
    return module


@contextmanager
def adversarial_bn(enabled: bool = True) -> Iterator[None]:
    """Route forwards through the adversarial BatchNorms of every :class:`DualBatchNorm` while active.

    Example:
        >>> import torch
        >>> net = convert_to_dual_bn(nn.Sequential(nn.BatchNorm1d(2)))
        >>> with adversarial_bn():
        ...     _ = net(torch.randn(4, 2))
        >>> int(net[0].adversarial.num_batches_tracked), int(net[0].clean.num_batches_tracked)
        (1, 0)
    """
    token = _ROUTE_ADVERSARIAL.set(enabled)
    try:
        yield
    finally:
        _ROUTE_ADVERSARIAL.reset(token)
