"""PixelFGSM: the pixel-space control with IDAATransform's call signature, input checks and encoder hygiene."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import batch, make_encoder
from torch import nn

from idaa_transforms import PixelFGSM, nt_xent
from idaa_transforms.pixel_fgsm import matched_pixel_eps

pytestmark = pytest.mark.usefixtures("single_thread")


def bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k]


def test_one_signed_step_that_increases_the_loss():
    encoder = make_encoder().eval()
    x = batch(8)
    out = PixelFGSM(encoder, eps=0.02)(x)
    torch.testing.assert_close((out - x).abs(), torch.full_like(x, 0.02), atol=1e-6, rtol=0)
    with torch.no_grad():
        anchor = encoder(x)
        before, after = nt_xent(anchor, encoder(x)), nt_xent(anchor, encoder(out))
        random = nt_xent(anchor, encoder(x + 0.02 * torch.randn_like(x).sign()))
    assert after > random > before - 1e-6


def test_matches_the_formula_for_a_linear_loss():
    x, weight = batch(4), torch.randn(1, 3, 32, 32)
    out = PixelFGSM(eps=0.1)(x, loss_fn=lambda a, b: (b * weight).sum())
    torch.testing.assert_close(out, x + 0.1 * weight.sign().expand_as(x), atol=1e-6, rtol=0)


def test_encoder_grads_modes_and_statistics_untouched_also_with_a_loss_fn():
    encoder = make_encoder()
    before = bn_stats(encoder)
    PixelFGSM(encoder, eps=0.02)(batch(8))
    PixelFGSM(encoder, eps=0.02)(batch(8), loss_fn=lambda a, b: nt_xent(encoder(a), encoder(b)))
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats(encoder)))
    assert all(p.grad is None for p in encoder.parameters()) and encoder.training


def test_single_image_empty_batch_and_dtype():
    encoder = make_encoder().eval()
    fgsm = PixelFGSM(encoder, eps=0.02)
    x = batch(4)
    assert fgsm(x[0], loss_fn=lambda a, b: b.sum()).shape == (3, 32, 32)
    assert fgsm(x[:0]).shape == (0, 3, 32, 32)
    out = PixelFGSM(eps=0.02)(x.double(), loss_fn=lambda a, b: b.sum())
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda f, x: f([[0.0]]), TypeError, "PixelFGSM: expected a torch.Tensor"),
        (lambda f, x: f(x[0, 0]), ValueError, r"expected \(B, C, H, W\) or \(C, H, W\)"),
        (lambda f, x: f((x * 255).byte()), TypeError, "floating-point"),
        (lambda f, x: f(x.index_fill(0, torch.tensor([1]), float("nan"))), ValueError, "NaN or Inf"),
        (lambda f, x: f(x, anchor=torch.zeros(8)), ValueError, r"anchor: expected encoder\(x\)"),
        (lambda f, x: f(x, anchor=torch.zeros(8, 5)), ValueError, "shaped like encoder"),
        (lambda f, x: f(x, loss_fn=lambda a, b: (b * float("nan")).sum()), ValueError, "the loss is nan"),
        (lambda f, x: f(x, loss_fn=lambda a, b: b.detach().sum()), ValueError, "no gradient path"),
        (lambda f, x: f(x.double()), TypeError, "encoder's parameters are torch.float32"),
        (lambda f, x: f(x, lambda a, b: b.sum()), TypeError, "positional argument"),
    ],
    ids=["not-tensor", "rank", "uint8", "nan", "1-D-anchor", "anchor-width", "nan-loss", "no-path", "dtype",
         "positional-loss"],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call(PixelFGSM(make_encoder().eval(), eps=0.02), batch(8))


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(eps=float("inf")), ValueError, "eps out of bounds"),
        (dict(eps=-1.0), ValueError, "eps out of bounds"),
        (dict(temperature=0.0), ValueError, "temperature out of bounds"),
        (dict(encoder=3), TypeError, "encoder: expected a callable"),
        (dict(loss_fn="nt_xent"), TypeError, "loss_fn: expected a callable"),
    ],
)
def test_bad_arguments(options, error, message):
    with pytest.raises(error, match=message):
        PixelFGSM(**options)


def test_no_loss_and_inference_mode():
    with pytest.raises(ValueError, match="PixelFGSM has no loss to increase"):
        PixelFGSM()(batch(2))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        PixelFGSM(eps=0.1)(batch(2), loss_fn=lambda a, b: b.sum())


def test_matched_pixel_eps():
    x = batch(2)
    assert matched_pixel_eps(x, x + 0.25) == pytest.approx(0.25)


def test_shares_the_adversaries_batchnorm_rules():
    from idaa_transforms import convert_to_dual_bn

    torch.manual_seed(0)
    bn1d = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match=r"^PixelFGSM: the encoder's BatchNorm cannot run in training mode on a batch "
                                         r"of one sample"):
        PixelFGSM(bn1d, eps=0.01)(torch.rand(1, 3, 8, 8))
    fgsm = PixelFGSM(bn1d, eps=0.01, use_adversarial_bn=True)
    with pytest.warns(UserWarning, match="PixelFGSM: use_adversarial_bn=True, but the encoder has no DualBatchNorm"):
        fgsm(torch.rand(4, 3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fgsm(torch.rand(4, 3, 8, 8))  # once
        PixelFGSM(convert_to_dual_bn(bn1d), eps=0.01, use_adversarial_bn=True)(torch.rand(4, 3, 8, 8))


def test_autocast_float16_moves_every_pixel():
    """In float16 the built-in loss's gradient underflows at about 3% of the pixels here (no step there); the
    attack runs in bfloat16 instead, so every pixel moves by eps."""
    encoder = make_encoder().eval()
    x = batch(64)
    with torch.autocast("cpu", dtype=torch.float16):
        out = PixelFGSM(encoder, eps=0.1)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close((out - x).abs(), torch.full_like(x, 0.1))
