"""The adversaries' loss scaling for float16 backward passes: small gradients keep their signs, the factor adapts on
the device, an overflow drops the step instead of spreading NaN, and float32/bfloat16 gradients are left alone."""

from __future__ import annotations

import pytest
import torch

from idaa_transforms._loss_scale import LossScale, backward_in_float16
from idaa_transforms.attack import loss_gradient

SIGNS = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0])


def leaf(dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.ones(4, 8, dtype=dtype, requires_grad=True)


def scaled_loss(z: torch.Tensor, size: float) -> torch.Tensor:
    """A loss whose gradient is ``size * SIGNS`` in every row (computed in float32, flowing back into ``z``)."""
    return (z.float() * SIGNS * size).sum()


def test_tiny_float16_gradients_keep_their_signs():
    z = leaf()
    assert not loss_gradient(scaled_loss(z, 1e-9), z).any()  # the problem: unscaled, float16 flushes them to zero
    grad = LossScale().gradient(scaled_loss(z, 1e-9), z, batch_size=4)
    assert grad.dtype == torch.float16
    assert torch.equal(grad.sign(), SIGNS.expand(4, 8).half())


@pytest.mark.parametrize("size", [1e-9, 1e-4, 30.0])
def test_the_factor_brings_the_largest_entry_near_the_target(size):
    scale = LossScale()
    z = leaf()
    for _ in range(5):  # from 1e-9 the factor needs 3 calls of at most MAX_CHANGE each
        grad = scale.gradient(scaled_loss(z, size), z, batch_size=4)
    largest = float(grad.abs().max())
    assert LossScale.TARGET / 2**0.5 <= largest <= LossScale.TARGET * 2**0.5
    assert torch.log2(scale._factor).round() == torch.log2(scale._factor)  # a power of two: scaling is exact


def test_an_overflow_drops_the_step_and_lowers_the_factor():
    scale = LossScale()
    z = leaf()
    first = torch.full((), LossScale.FIRST_PER_SAMPLE * 4)
    grad = scale.gradient(scaled_loss(z, 1e4), z, batch_size=4)  # 1e4 * 256 overflows float16 (max 65504)
    assert not grad.any()  # no NaN, no inf: the step leaves the latent where it was
    torch.testing.assert_close(scale._factor, first / LossScale.MAX_CHANGE)
    grad = scale.gradient(scaled_loss(z, 1e4), z, batch_size=4)
    assert torch.equal(grad.sign(), SIGNS.expand(4, 8).half())


def test_an_overflow_is_said_where_values_may_be_read():
    scale = LossScale()
    z = leaf()
    with pytest.warns(RuntimeWarning, match="overflowed at loss scale 256; this step was skipped"):
        scale.gradient(scaled_loss(z, 1e4), z, batch_size=4, check_finite=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_dtypes_are_not_scaled(dtype):
    scale = LossScale()
    z = leaf(dtype)
    grad = scale.gradient(scaled_loss(z, 3.0), z, batch_size=4)
    assert torch.equal(grad, loss_gradient(scaled_loss(z, 3.0), z))
    assert scale._factor is None


def test_the_loss_checks_still_apply():
    z = leaf()
    with pytest.raises(ValueError, match="the loss is nan"):
        LossScale().gradient(scaled_loss(z, float("nan")), z, batch_size=4, check_finite=True)
    with pytest.raises(ValueError, match="zero everywhere"):
        LossScale().gradient(scaled_loss(z, 0.0), z, batch_size=4, check_finite=True)


def test_backward_in_float16():
    x = torch.zeros(2, 3)
    assert not backward_in_float16(x)
    assert backward_in_float16(x, x.half())
    with torch.autocast("cpu", dtype=torch.float16):
        assert backward_in_float16(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not backward_in_float16(x)
