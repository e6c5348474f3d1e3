"""The adversaries' shared pieces: the Adversary protocol, frozen BatchNorm statistics, the loss and its gradient."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from helpers import batch, make_encoder, make_vae
from torch import nn

from idaa_transforms import Adversary, IDAATransform, PixelFGSM, convert_to_dual_bn, frozen_batchnorm_stats
from idaa_transforms.attack import (
    call_without_buffer_updates,
    encoder_loss,
    loss_gradient,
    modules_behind,
    require_autograd,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def assert_stats_equal(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = stats(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_batchnorm_stats_keeps_statistics_and_batch_normalisation():
    encoder = make_encoder()
    before = stats(encoder)
    reference = copy.deepcopy(encoder)
    x = batch(8)
    with frozen_batchnorm_stats(encoder) as same:
        out = encoder(x)
    assert same is encoder
    assert_stats_equal(before, encoder)
    torch.testing.assert_close(out, reference(x))  # normalised with batch statistics, as in training
    assert not torch.equal(stats(reference)["1.running_mean"], before["1.running_mean"])  # the copy did update
    assert encoder[1].running_mean is not None and encoder.training


def test_frozen_batchnorm_stats_restores_on_error_nesting_and_dual_bn():
    encoder = convert_to_dual_bn(make_encoder())
    before = stats(encoder)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_batchnorm_stats(encoder):
            with frozen_batchnorm_stats(encoder):
                encoder(batch(4))
            raise RuntimeError("boom")
    assert_stats_equal(before, encoder)
    encoder(batch(4))  # outside the block, statistics update again
    assert int(encoder[1].clean.num_batches_tracked) == 8


def test_call_without_buffer_updates_passes_keyword_arguments():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.norm(x) * scale

    net = Net()
    out = call_without_buffer_updates(net, torch.randn(8, 3), scale=2.0)
    assert out.shape == (8, 3) and int(net.norm.num_batches_tracked) == 0
    assert call_without_buffer_updates(lambda v, k: v + k, 1, k=2) == 3


@pytest.mark.parametrize("returned", ["tuple", "dict"])
def test_encoder_loss_needs_one_tensor(returned):
    encoder = make_encoder().eval()
    wrapped = (lambda v: (encoder(v), 0)) if returned == "tuple" else (lambda v: {"z": encoder(v)})
    x = batch(4)
    with pytest.raises(TypeError, match=f"got {returned}; wrap the encoder .* or pass loss_fn="):
        encoder_loss(wrapped, x, x.clone().requires_grad_(True))


@pytest.mark.parametrize("shape", [(), (4,)])
def test_encoder_loss_needs_one_row_per_sample(shape):
    x = batch(4)
    with pytest.raises(ValueError, match=r"one row per sample, \(B, D\), got shape .* or pass loss_fn="):
        encoder_loss(lambda v: v.sum() if shape == () else v.flatten(1).sum(1), x, x.clone().requires_grad_(True))


def test_loss_gradient_errors():
    z = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="expected a scalar tensor"):
        loss_gradient(z * 2, z)
    with pytest.raises(ValueError, match="no gradient path"):
        loss_gradient(torch.tensor(1.0), z)
    with pytest.raises(ValueError, match="the loss is nan"):
        loss_gradient((z * float("nan")).sum(), z, check_finite=True)
    value = (z * 2).sum()
    value.backward()
    with pytest.raises(ValueError, match=r"called \.backward\(\)"):
        loss_gradient(value, z)
    torch.testing.assert_close(loss_gradient((z * 3).sum(), z), torch.full((3,), 3.0))


def test_require_autograd():
    require_autograd("X")
    with torch.no_grad():
        require_autograd("X")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="X: the attack takes a gradient"):
        require_autograd("X")


def test_both_adversaries_follow_the_protocol():
    encoder = make_encoder().eval()
    adversaries: list[Adversary] = [IDAATransform(make_vae(), encoder=encoder, eps=0.5), PixelFGSM(encoder, eps=0.05)]
    x = batch(4)
    for adversary in adversaries:
        out = adversary(x, loss_fn=None, anchor=encoder(x).detach())
        assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
        assert (out - x).abs().max() > 1e-3
        custom = adversary(x, loss_fn=lambda a, b: (b * a).sum())
        assert not torch.equal(custom, out)


GLOBAL_ENCODER = make_encoder(seed=3)


def _through_the_global(v):
    return GLOBAL_ENCODER(v)


class _Holder:
    def __init__(self, model):
        self.model = model

    def __call__(self, v):
        return self.model(v)

    def encode(self, v):
        return self.model(v)


def test_modules_behind_a_callable_encoder():
    encoder = make_encoder()

    class Lightning(nn.Module):  # the pattern of a LightningModule that holds the backbone
        def __init__(self):
            super().__init__()
            self.backbone = encoder

        def encode(self, v):
            return self.backbone(v)

    module = Lightning()
    for callable_, expected in [(encoder, [encoder]), (module.encode, [module]), (lambda v: module.encode(v), [module]),
                                (functools.partial(encoder), [encoder]), (_Holder(encoder), [encoder]),
                                (_Holder(encoder).encode, [encoder]),
                                (_through_the_global, [GLOBAL_ENCODER]),
                                (lambda v: _through_the_global(v) + encoder(v), [GLOBAL_ENCODER, encoder]),
                                (torch.flatten, []), (lambda v: v.flatten(1), [])]:
        found = modules_behind(callable_)
        assert sorted(map(id, found)) == sorted(map(id, expected)) and len(found) == len(expected), callable_


def test_batchnorm_statistics_behind_a_callable_encoder_are_left_untouched():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.InstanceNorm2d(8, track_running_stats=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(32, 16))
    x = batch(8)
    for callable_ in (encoder, encoder.forward, lambda v: encoder(v), functools.partial(encoder), _Holder(encoder)):
        before = stats(encoder)
        assert "3.running_mean" in before  # the InstanceNorm's statistics are protected too
        call_without_buffer_updates(callable_, x)
        for adversary in (IDAATransform(make_vae(), encoder=callable_, eps=0.5), PixelFGSM(callable_, eps=0.1)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a module is found behind each: no warning
                adversary(x)
                adversary(x, loss_fn=lambda a, b: -(encoder(b) * encoder(a).detach()).sum())
        assert_stats_equal(before, encoder)
    encoder(x)  # the statistics still train in the caller's own passes
    assert not torch.equal(stats(encoder)["1.running_mean"], before["1.running_mean"])
    # The encoder's dtype is checked through a lambda too: one line, not torch's conv error.
    doubled = copy.deepcopy(encoder).double()
    with pytest.raises(TypeError, match="the encoder's parameters are torch.float64"):
        IDAATransform(make_vae(), encoder=lambda v: doubled(v), eps=0.5)(x)


def test_a_callable_without_a_module_behind_it_warns_that_it_cannot_protect_statistics():
    x = batch(8)
    for adversary in (IDAATransform(make_vae(), encoder=lambda v: v.flatten(1), eps=0.5),
                      PixelFGSM(lambda v: v.flatten(1), eps=0.1)):
        with pytest.warns(UserWarning, match=r"no nn.Module found behind encoder=.*<lambda>.*pass the module itself"):
            adversary(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            adversary(x)  # once


def test_a_gradient_that_is_zero_everywhere_is_an_error_not_a_no_op():
    x = batch(8)
    flat = lambda a, b: (b.round() - a).square().mean()  # noqa: E731 - a loss without a useful gradient
    for adversary in (IDAATransform(make_vae(), eps=0.5), PixelFGSM(eps=0.1)):
        with pytest.raises(ValueError, match="loss: its gradient is zero everywhere, so the attack step would change "
                                             "nothing"):
            adversary(x, loss_fn=flat)
    # The pixel attack starts at x itself, where a squared distance has no slope.
    squared = lambda a, b: (b - a).square().sum()  # noqa: E731
    with pytest.raises(ValueError, match="a loss at its minimum where x_adv == x"):
        PixelFGSM(eps=0.1)(x, loss_fn=squared)
    z = torch.zeros(3, requires_grad=True)
    assert loss_gradient((z * 0).sum(), z).abs().sum() == 0  # not checked without check_finite (no host read)
