"""SimCLR and BYOL: their losses, BYOL's target update, and the adversarial view each builds from its own loss."""

from __future__ import annotations

import pytest
import torch

from helpers import make_vae, to_pixels
from idaa_transforms import IDAATransform
from idaa_transforms.attack import call_without_buffer_updates
from idaa_transforms.pixel_fgsm import PixelFGSM
from idaa_transforms.trainers.methods import BYOL, build_method


def test_call_without_buffer_updates_keeps_batchnorm_statistics():
    method = build_method("simclr", "small_cnn").train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    call_without_buffer_updates(method, torch.rand(4, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    method(torch.rand(4, 3, 32, 32))  # a plain call does update them
    assert not all(torch.equal(before[k], v) for k, v in method.state_dict().items())


def test_byol_target_follows_online_by_ema():
    torch.manual_seed(0)
    byol = build_method("byol", "small_cnn", momentum=0.9)
    assert isinstance(byol, BYOL)
    assert not any(p.requires_grad for p in byol.target.parameters())
    with torch.no_grad():
        for p in byol.online.parameters():
            p.add_(1.0)
    target_before = [p.clone() for p in byol.target.parameters()]
    byol.after_step(0.0)  # momentum 0.9 at the start: target += 0.1 * (online - target)
    for t0, t, o in zip(target_before, byol.target.parameters(), byol.online.parameters()):
        torch.testing.assert_close(t, t0 + 0.1 * (o - t0))
    at_end = [p.clone() for p in byol.target.parameters()]
    byol.after_step(1.0)  # momentum 1 at the end: no change
    assert all(torch.equal(a, b) for a, b in zip(at_end, byol.target.parameters()))


def test_build_method_rejects_unknown_names():
    with pytest.raises(ValueError, match="method: expected one of"):
        build_method("moco", "small_cnn")


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_adversarial_view_increases_the_methods_loss(name):
    torch.manual_seed(0)
    method = build_method(name, "small_cnn").train()
    vae = make_vae()
    adversary = IDAATransform(vae, encoder=getattr(method, "encoder", None), eps=0.5)
    x = torch.rand(8, 3, 32, 32)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    with torch.no_grad():
        out = call_without_buffer_updates(method, x)
        clean = call_without_buffer_updates(method, x)
    x_adv = method.adversarial_view(adversary, x, out)
    assert x_adv.shape == x.shape and not x_adv.requires_grad and not torch.equal(x_adv, x)
    assert all(torch.equal(state[k], v) for k, v in method.state_dict().items())  # no BN statistics moved
    with torch.no_grad():
        # A random perturbation of the same size in latent space is the control.
        _, residual, latent = adversary.decompose(x)
        x_rand = to_pixels(vae, latent + 0.5 * torch.randn(latent.shape).sign()) + residual
        adv = call_without_buffer_updates(method, x_adv)
        rand = call_without_buffer_updates(method, x_rand)
    assert method.pair_loss(out, adv) > method.pair_loss(out, rand)
    assert method.pair_loss(out, adv) > method.pair_loss(out, clean)


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_pixel_adversary_takes_the_same_place(name):
    torch.manual_seed(0)
    method = build_method(name, "small_cnn").train()
    adversary = PixelFGSM(encoder=getattr(method, "encoder", method), eps=0.01)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        out = call_without_buffer_updates(method, x)
    x_adv = method.adversarial_view(adversary, x, out)
    torch.testing.assert_close((x_adv - x).abs().amax(), torch.tensor(0.01))
    with torch.no_grad():
        adv = call_without_buffer_updates(method, x_adv)
    assert method.pair_loss(out, adv) > method.pair_loss(out, call_without_buffer_updates(method, x))
