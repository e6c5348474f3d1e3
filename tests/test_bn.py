"""Dual BatchNorm: conversion, routing through the adversarial copies, and serialisation."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from idaa_transforms import DualBatchNorm, adversarial_bn, convert_to_dual_bn

pytestmark = pytest.mark.usefixtures("single_thread")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.inner = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4, momentum=0.3))

    def forward(self, x):
        return self.inner(self.bn(self.conv(x)))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5))


def counts(net: nn.Module) -> tuple[list[int], list[int]]:
    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm)]
    return [int(d.clean.num_batches_tracked) for d in duals], [int(d.adversarial.num_batches_tracked) for d in duals]


def test_convert_replaces_every_batchnorm():
    net = make_net()
    originals = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    assert len(originals) == 3
    assert convert_to_dual_bn(net) is net
    duals = [m for m in net.modules() if isinstance(m, DualBatchNorm)]
    assert len(duals) == 3
    assert [d.clean for d in duals] == originals  # the original modules become the clean copies
    # Every remaining BatchNorm is a copy held by a DualBatchNorm.
    held = {id(b) for d in duals for b in (d.clean, d.adversarial)}
    assert {id(m) for m in net.modules() if isinstance(m, _BatchNorm)} == held
    assert isinstance(net[4], DualBatchNorm) and isinstance(net[0].bn, DualBatchNorm)
    assert isinstance(net[0].inner[1].clean, nn.BatchNorm2d) and isinstance(net[4].adversarial, nn.BatchNorm1d)


def test_adversarial_copy_is_independent():
    bn = nn.BatchNorm2d(4, momentum=0.3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.running_mean.fill_(0.5)
    dual = convert_to_dual_bn(bn, adversarial_momentum=0.05)
    assert isinstance(dual, DualBatchNorm) and dual.clean is bn
    assert dual.clean.momentum == 0.3 and dual.adversarial.momentum == 0.05
    torch.testing.assert_close(dual.adversarial.weight, bn.weight)
    torch.testing.assert_close(dual.adversarial.running_mean, bn.running_mean)
    assert dual.adversarial.weight.data_ptr() != bn.weight.data_ptr()
    assert dual.adversarial.running_mean.data_ptr() != bn.running_mean.data_ptr()
    assert convert_to_dual_bn(nn.BatchNorm1d(3)).adversarial.momentum == 0.1  # kept by default


def test_convert_twice_does_not_nest():
    net = convert_to_dual_bn(make_net())
    convert_to_dual_bn(net)
    assert sum(isinstance(m, DualBatchNorm) for m in net.modules()) == 3
    assert not any(isinstance(m.clean, DualBatchNorm) for m in net.modules() if isinstance(m, DualBatchNorm))


def test_routing_updates_only_the_routed_copy():
    net = convert_to_dual_bn(make_net()).train()
    x = torch.randn(4, 3, 8, 8)
    net(x)
    assert counts(net) == ([1, 1, 1], [0, 0, 0])
    with adversarial_bn():
        net(x)
        net(x)
    assert counts(net) == ([1, 1, 1], [2, 2, 2])
    net(x)
    assert counts(net) == ([2, 2, 2], [2, 2, 2])
    with adversarial_bn(False):
        net(x)
    assert counts(net) == ([3, 3, 3], [2, 2, 2])


def test_routing_changes_eval_outputs():
    net = convert_to_dual_bn(make_net()).eval()
    with torch.no_grad():
        net[4].adversarial.running_mean.fill_(3.0)
        x = torch.randn(2, 3, 8, 8)
        clean = net(x)
        with adversarial_bn():
            adversarial = net(x)
        torch.testing.assert_close(adversarial, clean - 3.0 / (1 + 1e-5) ** 0.5 * net[4].adversarial.weight)
        torch.testing.assert_close(net(x), clean)


def test_nesting_and_exceptions_reset_routing():
    net = convert_to_dual_bn(make_net()).train()
    x = torch.randn(4, 3, 8, 8)
    with adversarial_bn():
        with adversarial_bn(False):
            net(x)
        assert counts(net) == ([1, 1, 1], [0, 0, 0])
        net(x)
        assert counts(net) == ([1, 1, 1], [1, 1, 1])
        with pytest.raises(RuntimeError, match="boom"):
            with adversarial_bn(False):
                raise RuntimeError("boom")
        net(x)  # still adversarial after the inner block raised
        assert counts(net) == ([1, 1, 1], [2, 2, 2])
    with pytest.raises(KeyError):
        with adversarial_bn():
            raise KeyError("x")
    net(x)
    assert counts(net) == ([2, 2, 2], [2, 2, 2])


def test_routing_is_per_thread():
    net = convert_to_dual_bn(make_net()).train()
    x = torch.randn(4, 3, 8, 8)
    with adversarial_bn():
        worker = threading.Thread(target=net, args=(x,))
        worker.start()
        worker.join()
    assert counts(net) == ([1, 1, 1], [0, 0, 0])  # a thread starts with clean routing


def test_state_dict_holds_both_copies():
    net = convert_to_dual_bn(make_net()).train()
    with adversarial_bn():
        net(torch.randn(4, 3, 8, 8) + 2.0)
    state = net.state_dict()
    for key in ("0.bn.clean.running_mean", "0.bn.adversarial.running_mean", "4.clean.weight",
                "4.adversarial.num_batches_tracked", "0.inner.1.adversarial.running_var"):
        assert key in state
    assert not torch.equal(state["0.bn.clean.running_mean"], state["0.bn.adversarial.running_mean"])
    fresh = convert_to_dual_bn(make_net())
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
