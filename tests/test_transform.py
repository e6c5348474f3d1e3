"""IDAATransform: decomposition, the adversarial latent step, randomness, encoder hygiene, input validation."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import batch, make_encoder, make_vae, to_pixels
from torch import nn

from idaa_transforms import (
    Decomposition,
    DualBatchNorm,
    IDAATransform,
    IdentityVAE,
    VAEConfig,
    convert_to_dual_bn,
    frozen_batchnorm_stats,
    negative_cosine,
    nt_xent,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# -- helpers -------------------------------------------------------------------------------------------------------


def pixels_with_grad(vae: IdentityVAE, z: torch.Tensor) -> torch.Tensor:
    """``decode(z)`` in [0, 1] pixel space (the VAE sees ``(p - 0.5) / 0.5``), differentiable."""
    return vae.decode(z) * 0.5 + 0.5


def linear_loss(weight: torch.Tensor):
    """A per-sample separable loss ``sum(weight * x_adv)``: its gradient in ``z`` is ``J^T weight``."""
    return lambda x, x_adv: (x_adv * weight).sum()


def reference_attack(vae, x, loss, *, eps, steps, step_size, norm="linf"):
    """Straightforward re-implementation of the algorithm in the docs, for 32 px inputs in [0, 1] pixel space."""
    with torch.no_grad():
        mu = vae.encode((x - 0.5) / 0.5).mu
        residual = x - pixels_with_grad(vae, mu)
    z = mu.clone()
    for _ in range(steps):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(x, pixels_with_grad(vae, z) + residual), z)
        z = z.detach()
        if norm == "linf":
            z = z + step_size * grad.sign()
            z = torch.minimum(torch.maximum(z, mu - eps), mu + eps)
        else:
            z = z + step_size * grad / grad.norm(dim=1, keepdim=True)
            delta = z - mu
            radius = delta.norm(dim=1, keepdim=True)
            z = mu + torch.where(radius > eps, delta * eps / radius, delta)
    with torch.no_grad():
        return pixels_with_grad(vae, z) + residual, z, mu


def record_latents(monkeypatch, vae: IdentityVAE) -> list[torch.Tensor]:
    """Every latent the VAE decodes from now on, in call order."""
    seen: list[torch.Tensor] = []
    original = vae.decode

    def spy(z):
        seen.append(z.detach().clone())
        return original(z)

    monkeypatch.setattr(vae, "decode", spy)
    return seen


def smooth_batch(b: int = 8, seed: int = 0) -> torch.Tensor:
    """Images with structure (upsampled 4x4 noise), so that a small encoder tells them apart."""
    return F.interpolate(batch(b, 4, 4, seed=seed), size=(32, 32), mode="bilinear", align_corners=False)


def spatial_encoder() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Tanh(), nn.Flatten()).eval()


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def assert_same_state(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = bn_state(module)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


class Holder(nn.Module):
    """A model that keeps the transform as an attribute, as a LightningModule or an augmentation module does."""

    def __init__(self, net: nn.Module, idaa: IDAATransform) -> None:
        super().__init__()
        self.net = net
        self.idaa = idaa


# -- decomposition and identities ------------------------------------------------------------------------------------


def test_eps_zero_returns_input(make_idaa, encoder, x):
    out = make_idaa(encoder, eps=0.0)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_decompose_sums_to_input_at_native_size(make_idaa, vae, x):
    parts = make_idaa().decompose(x)
    assert isinstance(parts, Decomposition)
    assert parts.reconstruction.shape == parts.residual.shape == x.shape
    assert parts.latent.shape == (8, 8)
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-6, rtol=0)
    # The identity is G(x) = decode(encode(x).mu), in pixel space.
    with torch.no_grad():
        mu = vae.encode((x - 0.5) / 0.5).mu
    torch.testing.assert_close(parts.latent, mu)
    torch.testing.assert_close(parts.reconstruction, to_pixels(vae, mu), atol=1e-6, rtol=0)
    assert not torch.allclose(parts.reconstruction, x, atol=1e-2)  # a random VAE does not reconstruct: R(x) matters


def test_decompose_other_size_runs_vae_at_native_size(make_idaa, vae):
    x = batch(4, 40, 56)
    parts = make_idaa().decompose(x)
    assert parts.reconstruction.shape == parts.residual.shape == (4, 3, 40, 56)
    assert parts.latent.shape == (4, 8)
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-6, rtol=0)
    # G is decoded at 32x32 and resized back to 40x56.
    resized = F.interpolate(to_pixels(vae, parts.latent), size=(40, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(parts.reconstruction, resized, atol=1e-5, rtol=0)
    # The encoder saw the image resized to 32x32 (whatever the resampling filter, the latent is close to that).
    with torch.no_grad():
        small = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        mu_small = vae.encode((small - 0.5) / 0.5).mu
        mu_other = vae.encode((batch(4, seed=9) - 0.5) / 0.5).mu
    assert (parts.latent - mu_small).norm() < 0.2 * (parts.latent - mu_other).norm()


def test_forward_other_size_keeps_shape_and_residual(make_idaa, vae, monkeypatch):
    x = batch(4, 40, 56)
    idaa = make_idaa(loss_fn=linear_loss(torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))), eps=0.5)
    parts = idaa.decompose(x)
    seen = record_latents(monkeypatch, vae)
    out = idaa(x)
    assert out.shape == x.shape
    assert (out - x).abs().max() > 1e-3
    resized = F.interpolate(to_pixels(vae, seen[-1]), size=(40, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out - parts.residual, resized, atol=1e-5, rtol=0)


def test_single_image_input(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.3)
    out = idaa(x[0])
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, idaa(x[:1])[0])
    parts = idaa.decompose(x[0])
    assert parts.reconstruction.shape == parts.residual.shape == (3, 32, 32)
    assert parts.latent.shape == (idaa.vae.config.latent_dim,)  # unbatched in, unbatched out, latent included
    torch.testing.assert_close(parts.reconstruction + parts.residual, x[0], atol=1e-6, rtol=0)


def test_mean_std_are_the_callers_normalisation(make_idaa):
    x = smooth_batch(4)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    weight = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pixel_loss = linear_loss(weight)
    out_pixels = make_idaa(loss_fn=pixel_loss, eps=0.5)(x)
    normalised = make_idaa(loss_fn=lambda a, b: pixel_loss(a * std + mean, b * std + mean), eps=0.5,
                           mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    out_normalised = normalised((x - mean) / std)
    torch.testing.assert_close(out_normalised, (out_pixels - mean) / std, atol=1e-4, rtol=0)
    parts = normalised.decompose((x - mean) / std)
    torch.testing.assert_close(parts.reconstruction, (make_idaa().decompose(x).reconstruction - mean) / std, atol=1e-5, rtol=0)


def test_clamp_keeps_valid_pixel_range(make_idaa, eval_encoder, x):
    free = make_idaa(eval_encoder, eps=5.0)(x)
    assert free.min() < 0 or free.max() > 1  # the test would be vacuous otherwise
    clamped = make_idaa(eval_encoder, eps=5.0, clamp=True)(x)
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped, free.clamp(0, 1))
    normalised = make_idaa(eval_encoder, eps=5.0, clamp=True, mean=0.5, std=0.25)((x - 0.5) / 0.25)
    assert normalised.min() >= -2 - 1e-6 and normalised.max() <= 2 + 1e-6


def test_decomposition_names_the_parts_for_what_they_are(make_idaa, x):
    parts = make_idaa().decompose(x)
    assert Decomposition._fields == ("reconstruction", "residual", "latent")
    with pytest.warns(DeprecationWarning, match="use .reconstruction"):
        old = parts.identity
    assert old is parts.reconstruction


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_decompose_returns_the_input_dtype(make_idaa, x, dtype):
    parts = make_idaa().decompose(x.to(dtype))
    assert parts.reconstruction.dtype == parts.residual.dtype == dtype
    reference = make_idaa().decompose(x)
    tolerance = 1e-5 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(parts.reconstruction.float(), reference.reconstruction, atol=tolerance, rtol=0)


# -- the adversarial step ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_increases_loss_more_than_random_step(vae, seed):
    encoder = spatial_encoder()
    x = smooth_batch(seed=seed)
    eps = 0.5
    idaa = IDAATransform(vae, encoder=encoder, eps=eps)
    adv = idaa(x)
    parts = idaa.decompose(x)
    signs = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        anchor = encoder(x)
        clean_loss = nt_xent(anchor, encoder(x))
        adv_loss = nt_xent(anchor, encoder(adv))
        random_losses = []
        for _ in range(8):
            step = torch.randint(0, 2, parts.latent.shape, generator=signs).float() * 2 - 1
            random_losses.append(nt_xent(anchor, encoder(to_pixels(vae, parts.latent + eps * step) + parts.residual)))
        random_losses = torch.stack(random_losses)
    assert adv_loss > clean_loss
    assert adv_loss > random_losses.max()
    assert adv_loss - clean_loss > 1.5 * (random_losses.mean() - clean_loss)


def test_one_step_matches_reference_and_moves_only_z(make_idaa, vae, x, monkeypatch):
    eps = 0.4
    loss = linear_loss(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    idaa = make_idaa(loss_fn=loss, eps=eps)
    assert idaa.step_size == eps
    parts = idaa.decompose(x)
    seen = record_latents(monkeypatch, vae)
    out = idaa(x)
    z_adv = seen[-1]
    # x_adv - R(x) is an output of the decoder: only z moved, the residual is the one of x.
    torch.testing.assert_close(out - parts.residual, to_pixels(vae, z_adv), atol=1e-5, rtol=0)
    torch.testing.assert_close((z_adv - parts.latent).abs(), torch.full_like(z_adv, eps), atol=1e-5, rtol=0)
    monkeypatch.undo()
    expected, z_ref, _ = reference_attack(vae, x, loss, eps=eps, steps=1, step_size=eps)
    torch.testing.assert_close(z_adv, z_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # Ascent, not descent: the loss went up.
    assert loss(x, out) > loss(x, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_multi_step_matches_reference(make_idaa, vae, x, norm):
    loss = linear_loss(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    idaa = make_idaa(loss_fn=loss, eps=0.5, steps=3, norm=norm)
    assert idaa.step_size == pytest.approx(2.5 * 0.5 / 3)
    expected, _, _ = reference_attack(vae, x, loss, eps=0.5, steps=3, step_size=idaa.step_size, norm=norm)
    torch.testing.assert_close(idaa(x), expected, atol=1e-5, rtol=0)


def test_multi_step_linf_stays_in_ball(make_idaa, vae, x, monkeypatch):
    eps = 0.3
    # A loss whose gradient sign changes along the path, so the steps do not all point the same way.
    weight = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    idaa = make_idaa(loss_fn=lambda a, b: ((b - a) * weight).pow(2).sum() + (b * weight).sum(), eps=eps, steps=4, step_size=eps)
    mu = idaa.decompose(x).latent
    seen = record_latents(monkeypatch, vae)
    idaa(x)
    assert len(seen) >= 4
    for z in seen:
        assert (z - mu).abs().max() <= eps + 1e-5
    final = (seen[-1] - mu).abs()
    torch.testing.assert_close(final.amax(dim=1), torch.full((8,), eps), atol=1e-5, rtol=0)


def test_multi_step_l2_stays_in_ball(make_idaa, vae, x, monkeypatch):
    eps = 0.6
    weight = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    idaa = make_idaa(loss_fn=linear_loss(weight), eps=eps, steps=3, step_size=eps, norm="l2")
    parts = idaa.decompose(x)
    seen = record_latents(monkeypatch, vae)
    out = idaa(x)
    for z in seen:
        assert (z - parts.latent).norm(dim=1).max() <= eps + 1e-5
    torch.testing.assert_close((seen[-1] - parts.latent).norm(dim=1), torch.full((8,), eps), atol=1e-5, rtol=0)
    torch.testing.assert_close(out - parts.residual, to_pixels(vae, seen[-1]), atol=1e-5, rtol=0)
    # Not a sign step: the displacement is not the same in every coordinate.
    delta = (seen[-1] - parts.latent).abs()
    assert (delta.amax(dim=1) - delta.amin(dim=1)).min() > 1e-3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_a_point_in_the_ball(make_idaa, vae, x, monkeypatch, norm):
    eps = 0.5
    idaa = make_idaa(loss_fn=linear_loss(torch.ones(1)), eps=eps, step_size=0.0, random_start=True, norm=norm, generator=0)
    parts = idaa.decompose(x)
    seen = record_latents(monkeypatch, vae)
    out = idaa(x)
    delta = seen[-1] - parts.latent
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert (size > 0).all()
    # Uniform in the ball: strictly inside it (almost surely), not pushed to its surface.
    assert (size < eps - 1e-4).all()
    if norm == "linf":
        assert (delta.abs() > eps - 1e-3).float().mean() < 0.05
    # The residual is still the one of x (taken at the posterior mean, not at the random start).
    torch.testing.assert_close(out - parts.residual, to_pixels(vae, seen[-1]), atol=1e-5, rtol=0)
    assert (out - x).abs().max() > 1e-4


def test_random_start_changes_the_result(make_idaa, eval_encoder, x):
    plain = make_idaa(eval_encoder, eps=0.3)(x)
    randomised = make_idaa(eval_encoder, eps=0.3, random_start=True, steps=2, generator=0)(x)
    assert not torch.allclose(plain, randomised, atol=1e-4)


# -- randomness ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(random_start=True), dict(p=0.5), dict(random_start=True, p=0.5)])
def test_seed_reproducibility(make_idaa, eval_encoder, x, options):
    first = make_idaa(eval_encoder, eps=0.5, generator=3, **options)(x)
    again = make_idaa(eval_encoder, eps=0.5, generator=3, **options)(x)
    other = make_idaa(eval_encoder, eps=0.5, generator=4, **options)(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_generator_object_and_advancing_state(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5, random_start=True, generator=torch.Generator().manual_seed(3))
    first, second = idaa(x), idaa(x)
    assert not torch.equal(first, second)  # the generator advances between calls
    torch.testing.assert_close(first, make_idaa(eval_encoder, eps=0.5, random_start=True, generator=3)(x), rtol=0, atol=0)


def test_p_zero_returns_input_unchanged(make_idaa, encoder, x):
    out = make_idaa(encoder, eps=0.5, p=0.0, generator=0)(x)
    assert torch.equal(out, x)


def test_p_half_changes_only_selected_samples(make_idaa, x):
    loss = linear_loss(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    full = make_idaa(loss_fn=loss, eps=0.5)(x)
    out = make_idaa(loss_fn=loss, eps=0.5, p=0.5, generator=1)(x)
    unchanged = (out == x).flatten(1).all(dim=1)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-3
    assert bool((unchanged | changed).all())  # each sample is either untouched or really augmented
    assert 0 < int(changed.sum()) < 8
    # The loss is separable per sample, so the augmented ones are exactly the full-batch results.
    torch.testing.assert_close(out[changed], full[changed], atol=1e-5, rtol=0)


def test_p_half_with_builtin_loss_and_anchor(make_idaa, eval_encoder, x):
    with torch.no_grad():
        anchor = eval_encoder(x)
    idaa_a = make_idaa(eval_encoder, eps=0.5, p=0.5, generator=1)
    idaa_b = make_idaa(eval_encoder, eps=0.5, p=0.5, generator=1)
    with_anchor, without = idaa_a(x, anchor=anchor), idaa_b(x)
    torch.testing.assert_close(with_anchor, without, atol=1e-6, rtol=0)
    unchanged = (without == x).flatten(1).all(dim=1)
    assert 0 < int(unchanged.sum()) < 8


def bn1d_encoder() -> nn.Module:
    """A projection-head-like encoder whose BatchNorm1d cannot train on one sample (like lightly's heads)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16)).train()


def test_p_below_one_never_runs_the_encoder_on_a_lone_sample(make_idaa):
    x = batch(4, 32, 32)
    lone = 0
    for seed in range(40):  # about a quarter of these draws choose exactly one of the 4 samples
        idaa = make_idaa(bn1d_encoder(), eps=0.5, p=0.5, generator=seed)
        count = int((torch.rand(4, generator=torch.Generator().manual_seed(seed)) < 0.5).sum())
        out = idaa(x)  # before: torch's "Expected more than 1 value per channel" for the lone draws
        changed = (out != x).flatten(1).any(dim=1)
        assert int(changed.sum()) == count  # the companion's own view is dropped
        lone += count == 1
    assert lone >= 3


def test_a_lone_sample_needs_no_companion_without_a_training_batchnorm(make_idaa, monkeypatch):
    x, seen = batch(4, 32, 32), []
    loss = linear_loss(torch.ones(1, 3, 32, 32))
    seed = next(s for s in range(100) if int((torch.rand(4, generator=torch.Generator().manual_seed(s)) < 0.5).sum())
                == 1)  # a draw that chooses exactly one sample
    for encoder, batch_seen in ((bn1d_encoder().eval(), 1), (bn1d_encoder(), 2), (None, 1)):
        idaa = make_idaa(encoder, loss_fn=loss, eps=0.5, p=0.5, generator=seed)
        monkeypatch.setattr(idaa, "_attack_latent", lambda part, *a: seen.append(part.shape[0]) or part)
        idaa(x)
        assert seen.pop() == batch_seen


def test_a_batch_of_one_through_a_training_batchnorm_is_a_clear_error(make_idaa):
    idaa = make_idaa(bn1d_encoder(), eps=0.5)
    with pytest.raises(ValueError, match=r"^IDAATransform: the encoder's BatchNorm cannot run in training mode on a "
                                         r"batch of one sample; transform batches of at least 2 images"):
        idaa(batch(1, 32, 32))
    assert idaa(batch(1, 32, 32)[0:1].expand(2, -1, -1, -1).contiguous()).shape == (2, 3, 32, 32)


# -- the caller's encoder is left as found -------------------------------------------------------------------------


def test_encoder_grads_flags_and_bn_buffers_untouched(make_idaa, encoder, x):
    encoder[4].eval()  # mixed flags must survive as they are
    flags = [m.training for m in encoder.modules()]
    before = bn_state(encoder)
    out = make_idaa(encoder, eps=0.5, steps=2)(x)
    assert (out - x).abs().max() > 1e-3
    assert all(p.grad is None for p in encoder.parameters())
    assert [m.training for m in encoder.modules()] == flags
    assert_same_state(before, encoder)
    assert int(encoder[1].num_batches_tracked) == 7


def test_encoder_existing_grads_kept(make_idaa, encoder, x):
    for i, p in enumerate(encoder.parameters()):
        p.grad = torch.full_like(p, float(i))
    expected = [p.grad.clone() for p in encoder.parameters()]
    make_idaa(encoder, eps=0.5)(x)
    for p, g in zip(encoder.parameters(), expected):
        assert torch.equal(p.grad, g)


def test_train_mode_encoder_uses_batch_statistics(make_idaa, encoder, x):
    """The attack sees the encoder as the caller's forward pass does (batch statistics in train mode)."""
    frozen = copy.deepcopy(encoder).eval()
    train_result = make_idaa(encoder, eps=0.5)(x)
    eval_result = make_idaa(frozen, eps=0.5)(x)
    assert not torch.allclose(train_result, eval_result, atol=1e-4)
    # Same as running it on a throw-away copy in train mode (where buffer updates would not matter).
    torch.testing.assert_close(train_result, make_idaa(copy.deepcopy(encoder), eps=0.5)(x), atol=1e-6, rtol=0)


def test_encoder_is_referenced_not_owned(make_idaa, encoder):
    idaa = make_idaa(encoder)
    assert idaa.encoder is encoder
    own = {id(p) for p in idaa.parameters()}
    assert not any(id(p) in own for p in encoder.parameters())
    assert not any(k.startswith("encoder.") for k in idaa.state_dict())


def test_works_under_no_grad(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5)
    expected = idaa(x)
    with torch.no_grad():
        out = idaa(x)
    assert (out - x).abs().max() > 1e-3
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_output_detached_even_if_input_requires_grad(make_idaa, encoder, x):
    leaf = x.clone().requires_grad_(True)
    out = make_idaa(encoder, eps=0.5)(leaf * 1.0)
    assert not out.requires_grad and out.grad_fn is None
    assert leaf.grad is None
    out_p = make_idaa(encoder, eps=0.5, p=0.5, generator=0)(leaf)
    assert not out_p.requires_grad


def test_vae_stays_in_eval_mode(make_idaa, vae):
    vae.train()
    idaa = make_idaa()
    assert not idaa.vae.training
    idaa.train()
    assert idaa.training
    assert not any(m.training for m in idaa.vae.modules())
    idaa.eval()
    idaa.train(True)
    assert not any(m.training for m in idaa.vae.modules())


def test_vae_buffers_untouched(make_idaa, vae, encoder, x):
    before = bn_state(vae)
    make_idaa(encoder, eps=0.5, steps=2).train()(x)
    assert_same_state(before, vae)
    assert all(p.grad is None for p in vae.parameters())


def test_bn_stats_untouched_with_a_loss_fn_that_calls_the_known_encoder(make_idaa, encoder, x):
    loss = lambda a, b: nt_xent(encoder(a), encoder(b))  # noqa: E731 - a user's loss that runs the model
    before = bn_state(encoder)
    make_idaa(encoder, loss_fn=loss, eps=0.5)(x)
    assert_same_state(before, encoder)
    make_idaa(encoder, eps=0.5)(x, loss_fn=loss)  # per call too
    assert_same_state(before, encoder)
    make_idaa(loss_fn=loss, eps=0.5)(x)  # an encoder the transform does not know: the caller protects it
    assert int(encoder[1].num_batches_tracked) > 7


def test_frozen_batchnorm_stats_protects_an_unknown_encoder(make_idaa, encoder, x):
    loss = lambda a, b: nt_xent(encoder(a), encoder(b))  # noqa: E731
    before = bn_state(encoder)
    with frozen_batchnorm_stats(encoder):
        make_idaa(loss_fn=loss, eps=0.5)(x)
    assert_same_state(before, encoder)


# -- the VAE: frozen, held outside the module tree, moved with it --------------------------------------------------


def test_vae_is_frozen_and_outside_the_module_tree(make_idaa, vae, encoder):
    idaa = make_idaa(encoder)
    assert idaa.vae is vae and not any(p.requires_grad for p in vae.parameters())
    assert list(idaa.parameters()) == [] and list(idaa.buffers()) == [] and list(idaa.children()) == []
    holder = Holder(encoder, idaa)
    vae_ids = {id(t) for t in [*vae.parameters(), *vae.buffers()]}
    assert not vae_ids & {id(t) for t in [*holder.parameters(), *holder.buffers()]}
    assert [id(p) for p in holder.parameters()] == [id(p) for p in encoder.parameters()]
    idaa.vae = make_vae(seed=5)  # re-assigning does not register it either
    assert list(idaa.children()) == []


def test_holder_moves_and_casts_the_vae_but_leaves_it_frozen(make_idaa, encoder, x):
    holder = Holder(encoder, make_idaa(encoder, eps=0.5))
    weights = [p.clone() for p in holder.idaa.vae.parameters()]
    holder.requires_grad_(True)
    holder.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Conv2d) else None)
    holder.train()
    assert not any(p.requires_grad for p in holder.idaa.vae.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, holder.idaa.vae.parameters()))
    assert not holder.idaa.vae.training
    holder.to(torch.float64)
    assert {p.dtype for p in holder.idaa.vae.parameters()} == {torch.float64}
    assert holder.idaa._scale.dtype == torch.float64
    out = holder.idaa(x.double(), loss_fn=linear_loss(x.double()))
    assert out.dtype == torch.float64 and (out - x.double()).abs().max() > 1e-3
    holder.half()
    assert {p.dtype for p in holder.idaa.vae.parameters()} == {torch.float16}


def test_loss_fn_calling_backward_with_retain_graph_leaves_no_vae_grads(make_idaa, vae, x):
    def loss(a, b):
        value = (b * x).sum()
        value.backward(retain_graph=True)
        return value

    out = make_idaa(loss_fn=loss, eps=0.5)(x)
    assert (out - x).abs().max() > 1e-3
    assert all(p.grad is None for p in vae.parameters())


def test_loss_fn_calling_backward_is_a_clear_error(make_idaa, vae, x):
    def loss(a, b):
        value = (b * x).sum()
        value.backward()
        return value

    with pytest.raises(ValueError, match=r"loss_fn: it called \.backward\(\) on the loss; return the loss instead"):
        make_idaa(loss_fn=loss, eps=0.5)(x)
    assert all(p.grad is None for p in vae.parameters())


# -- dual BatchNorm ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("adversarial", [True, False])
def test_adversarial_bn_routing(make_idaa, x, adversarial):
    encoder = convert_to_dual_bn(make_encoder())
    duals = [m for m in encoder.modules() if isinstance(m, DualBatchNorm)]
    assert len(duals) == 2
    calls = {"clean": 0, "adversarial": 0}
    for dual in duals:
        dual.clean.register_forward_hook(lambda *_: calls.__setitem__("clean", calls["clean"] + 1))
        dual.adversarial.register_forward_hook(lambda *_: calls.__setitem__("adversarial", calls["adversarial"] + 1))
    before = bn_state(encoder)
    out = make_idaa(encoder, eps=0.5, use_adversarial_bn=adversarial)(x)
    assert (out - x).abs().max() > 1e-3
    if adversarial:
        assert calls["adversarial"] > 0 and calls["clean"] == 0
    else:
        assert calls["clean"] > 0 and calls["adversarial"] == 0
    assert_same_state(before, encoder)  # clean and adversarial running statistics alike
    assert all(p.grad is None for p in encoder.parameters())
    # Routing is back to clean afterwards.
    calls.update(clean=0, adversarial=0)
    with torch.no_grad():
        encoder.eval()(x)
    assert calls == {"clean": 2, "adversarial": 0}


def test_adversarial_bn_changes_result(make_idaa, x):
    encoder = convert_to_dual_bn(make_encoder().eval())
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, DualBatchNorm):
                m.adversarial.running_mean.add_(1.0)
    clean = make_idaa(encoder, eps=0.5)(x)
    adversarial = make_idaa(encoder, eps=0.5, use_adversarial_bn=True)(x)
    assert not torch.allclose(clean, adversarial, atol=1e-4)


# -- precision, layout, batch size, anchor -------------------------------------------------------------------------


def test_autocast_bfloat16(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = idaa(x)
        zero = make_idaa(eval_encoder, eps=0.0)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.isfinite(out).all()
    assert (out - x).abs().max() > 1e-3
    torch.testing.assert_close(zero, x, atol=1e-5, rtol=0)
    # Close to the float32 result: the step is the same up to bfloat16 rounding of a few gradient signs.
    assert (out - idaa(x)).abs().mean() < 0.5 * (out - x).abs().mean()


def test_autocast_float16_runs_the_builtin_attack_in_bfloat16(make_idaa, vae, monkeypatch):
    """In float16 the built-in loss's latent gradient loses entries to underflow; the attack's passes run under
    bfloat16 autocast instead, every latent moves by eps, and the caller's forward passes on either side (their
    float16 autocast and its weight cache) and a float16 anchor work, as in README's training step."""
    encoder = make_encoder().eval()
    x = smooth_batch(32)
    seen = record_latents(monkeypatch, vae)
    dtypes = []
    encoder.register_forward_hook(lambda *_: dtypes.append(torch.get_autocast_dtype("cpu")))
    idaa = make_idaa(encoder, eps=0.5)
    with torch.autocast("cpu", dtype=torch.float16):
        anchor = encoder(x)
        out = idaa(x, anchor=anchor.detach())
        assert encoder(out).dtype == torch.float16
    assert anchor.dtype == torch.float16 and dtypes == [torch.float16, torch.bfloat16, torch.float16]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen[0].dtype == torch.float32  # the latent keeps the VAE's precision under autocast
    moved = (seen[-1] - seen[0]).abs()
    assert (moved > 0.499).all() and (moved < 0.501).all()


def test_autocast_float16_with_a_loss_fn_keeps_float16_and_says_so(make_idaa, x):
    dtypes = []

    def loss(a, b):
        dtypes.append(torch.get_autocast_dtype("cpu"))
        return (b * a.flip(0)).mean()

    idaa = make_idaa(loss_fn=loss, eps=0.5)
    with torch.autocast("cpu", dtype=torch.float16):
        with pytest.warns(UserWarning, match="IDAATransform: under float16 autocast") as caught:
            idaa(x)
        idaa(x)  # once
    assert dtypes == [torch.float16, torch.float16] and len(caught) == 1
    assert caught[0].filename == __file__


def test_autocast_float16_with_a_float16_vae_keeps_float16_and_says_so(make_idaa, vae, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5).half()  # the VAE's BatchNorm in float16: bfloat16 would not run it
    with torch.autocast("cpu", dtype=torch.float16), pytest.warns(UserWarning, match="under float16 autocast"):
        out = idaa(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and (out - x).abs().max() > 1e-3


def test_the_eps_ball_holds_in_the_vaes_precision_under_autocast(make_idaa, vae, eval_encoder, x, monkeypatch):
    seen = record_latents(monkeypatch, vae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        make_idaa(eval_encoder, eps=0.01, steps=3, step_size=0.005)(x)
    assert (seen[-1] - seen[0]).abs().max() <= 0.01 + 1e-6  # in a bfloat16 latent: up to 1.56 eps


def test_l2_step_is_a_full_step_whatever_the_loss_scale(make_idaa, vae, x, monkeypatch):
    seen = record_latents(monkeypatch, vae)
    weight = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    norms = []
    for size in (1.0, 1e-12, 1e-30):
        seen.clear()
        make_idaa(loss_fn=lambda a, b: size * (b * weight).sum(), eps=0.5, norm="l2")(x)
        norms.append((seen[-1] - seen[0]).norm(dim=1))
    for n in norms:
        torch.testing.assert_close(n, torch.full_like(n, 0.5))


@pytest.mark.parametrize("steps", [1, 2])
def test_l2_step_leaves_a_zero_gradient_row_in_place_in_a_float16_latent(vae, x, steps):
    """A sample the loss ignores has a zero gradient row; normalising it must not give 0 / 0 in float16."""
    out = IDAATransform(copy.deepcopy(vae).half(), loss_fn=lambda a, b: (b[:2].float() ** 2).mean(), norm="l2",
                        eps=0.5, steps=steps)(x)
    assert torch.isfinite(out).all()
    moved = (out - x).abs().flatten(1).amax(1)
    assert (moved[:2] > 1e-3).all() and (moved[2:] < 1e-2).all()


def test_bfloat16_input_keeps_dtype(make_idaa, x):
    loss = linear_loss(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    out = make_idaa(loss_fn=loss, eps=0.5)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert (out.float() - x.bfloat16().float()).abs().max() > 1e-2


def test_bfloat16_input_and_encoder(vae, x):
    """The view handed to the loss has the input's dtype, like the output, whatever the VAE's dtype."""
    encoder = make_encoder().eval().bfloat16()
    seen = []

    def loss(a, b):
        seen.append(b.dtype)
        return negative_cosine(encoder(a), encoder(b))

    out = IDAATransform(vae, encoder=encoder, eps=0.5)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and (out.float() - x.bfloat16().float()).abs().max() > 1e-2
    IDAATransform(vae, loss_fn=loss, eps=0.5)(x.bfloat16())
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes_come_back_in_their_dtype(make_idaa, vae, x, dtype):
    """The VAE runs in its own dtype (float32 here); the view and the loss's x_adv have the input's dtype."""
    seen = []

    def loss(a, b):
        seen.append(b.dtype)
        return (b.float() * x).sum()

    out = make_idaa(loss_fn=loss, eps=0.5)(x.to(dtype))
    assert out.dtype == dtype and seen == [dtype]
    assert (out.double() - x.to(dtype).double()).abs().max() > 1e-2
    assert {p.dtype for p in vae.parameters()} == {torch.float32}


def test_encoder_dtype_other_than_the_input_is_a_clear_error_for_the_builtin_loss(make_idaa, eval_encoder, x):
    with pytest.raises(TypeError, match="encoder's parameters are torch.float32.*pass loss_fn="):
        make_idaa(eval_encoder, eps=0.5)(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="encoder's parameters are"):
        make_idaa(eval_encoder, eps=0.5)(x.double())  # autocast leaves float64 alone: no cast would save it
    # A loss_fn that casts is the user's business; under autocast the encoder's convolutions cast themselves.
    out = make_idaa(eval_encoder, eps=0.5)(x.double(), loss_fn=lambda a, b: nt_xent(eval_encoder(a.float()),
                                                                                    eval_encoder(b.float())))
    assert out.dtype == torch.float64


def test_channels_last_input(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5)
    out = idaa(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, idaa(x), atol=1e-5, rtol=0)
    parts = idaa.decompose(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("vae_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("options", [dict(), dict(p=0.5, generator=0)])
def test_outputs_keep_the_input_memory_layout(make_idaa, vae, eval_encoder, vae_layout, size, options):
    vae.to(memory_format=vae_layout)  # whichever layout the VAE runs in, the caller's layout comes back
    idaa = make_idaa(eval_encoder, eps=0.5, **options)
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    for layout in (torch.channels_last, torch.contiguous_format):
        xl = x.contiguous(memory_format=layout)
        outputs = [idaa(xl), *idaa.decompose(xl)[:2]]
        assert all(out.is_contiguous(memory_format=layout) for out in outputs), layout


def test_batch_of_one_uses_negative_cosine(make_idaa, x):
    encoder = spatial_encoder()
    single = x[:1]
    out = make_idaa(encoder, eps=0.5)(single)
    # NT-Xent with one sample is constant (no negatives): a zero gradient would leave x unchanged.
    with torch.no_grad():
        assert float(nt_xent(encoder(single), encoder(single))) == 0.0
    assert (out - single).abs().max() > 1e-3
    expected = make_idaa(loss_fn=lambda a, b: negative_cosine(encoder(a).flatten(1), encoder(b).flatten(1)), eps=0.5)(single)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_anchor_argument_matches_builtin_anchor(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5, steps=2)
    anchor = eval_encoder(x)  # with a graph, as it comes out of the caller's forward pass
    assert anchor.requires_grad
    torch.testing.assert_close(idaa(x, anchor=anchor), idaa(x), atol=1e-6, rtol=0)
    assert all(p.grad is None for p in eval_encoder.parameters())
    # The anchor is really used: a different one gives a different step.
    assert not torch.allclose(idaa(x, anchor=anchor.roll(1, dims=0)), idaa(x), atol=1e-4)


def test_per_call_loss_overrides_constructor_loss(make_idaa, eval_encoder, x):
    weight = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    idaa = make_idaa(eval_encoder, eps=0.5)
    per_call = idaa(x, loss_fn=linear_loss(weight))
    torch.testing.assert_close(per_call, make_idaa(loss_fn=linear_loss(weight), eps=0.5)(x), atol=0, rtol=0)
    assert not torch.allclose(per_call, idaa(x), atol=1e-4)


def test_loss_fn_receives_input_and_differentiable_view(make_idaa, x):
    received = []

    def loss(a, b):
        received.append((a, b))
        return (b * b).mean()

    make_idaa(loss_fn=loss, eps=0.2, steps=2)(x)
    assert len(received) == 2
    for a, b in received:
        assert torch.equal(a, x)
        assert b.shape == x.shape and b.requires_grad


# -- input and argument validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 32), (1, 2, 3, 32, 32)])
def test_wrong_rank(make_idaa, encoder, shape):
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\) or \(C, H, W\)"):
        make_idaa(encoder)(torch.rand(shape))
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\) or \(C, H, W\)"):
        make_idaa(encoder).decompose(torch.rand(shape))


def test_channel_mismatch(make_idaa, encoder):
    with pytest.raises(ValueError, match="expects 3 channels, got 1"):
        make_idaa(encoder)(torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_floating_input(make_idaa, encoder, dtype):
    with pytest.raises(TypeError, match="floating-point"):
        make_idaa(encoder)(torch.zeros(2, 3, 32, 32, dtype=dtype))


def test_non_tensor_input(make_idaa, encoder):
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        make_idaa(encoder)([[0.0]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(make_idaa, encoder, x, bad):
    x = x.clone()
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_idaa(encoder)(x)
    out = make_idaa(loss_fn=lambda a, b: b.nan_to_num().sum(), check_finite=False)(x)
    assert out.shape == x.shape  # the check can be switched off


def test_empty_batch_returned_unchanged(make_idaa, encoder):
    empty = torch.rand(0, 3, 32, 32)
    out = make_idaa(encoder)(empty)
    assert out.shape == (0, 3, 32, 32) and out.dtype == empty.dtype
    assert make_idaa(encoder, p=0.5, generator=0)(empty).shape == (0, 3, 32, 32)


def test_loss_must_be_scalar(make_idaa, x):
    with pytest.raises(ValueError, match="expected a scalar tensor"):
        make_idaa(loss_fn=lambda a, b: b.sum(dim=(1, 2, 3)))(x)
    with pytest.raises(ValueError, match="expected a scalar tensor"):
        make_idaa(loss_fn=lambda a, b: float(b.detach().sum()))(x)


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: (a * 0).sum() + torch.tensor(1.0, requires_grad=True),
        lambda a, b: b.detach().sum(),
        lambda a, b: torch.tensor(0.0),
    ],
    ids=["unrelated-leaf", "detached", "constant"],
)
def test_loss_without_gradient_path(make_idaa, x, loss):
    with pytest.raises(ValueError, match="no gradient path to x_adv"):
        make_idaa(loss_fn=loss)(x)


def test_loss_through_input_only(make_idaa, x):
    leaf = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="no gradient path to x_adv"):
        make_idaa(loss_fn=lambda a, b: a.sum())(leaf)


def test_device_mismatch(make_idaa, encoder, x):
    idaa = make_idaa(encoder).to("meta")
    with pytest.raises(ValueError, match="input is on cpu but the VAE is on meta"):
        idaa(x)
    with pytest.raises(ValueError, match="input is on cpu but the VAE is on meta"):
        idaa.decompose(x)
    on_cpu = IDAATransform(make_vae(), encoder=make_encoder().to("meta"))
    with pytest.raises(ValueError, match="encoder is on meta"):
        on_cpu(x)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(eps=-0.1), ValueError, "eps out of bounds"),
        (dict(eps=float("nan")), ValueError, "eps out of bounds"),
        (dict(eps="0.1"), ValueError, "eps out of bounds"),
        (dict(steps=0), ValueError, "steps out of bounds"),
        (dict(steps=1.5), ValueError, "steps out of bounds"),
        (dict(steps=True), ValueError, "steps out of bounds"),
        (dict(step_size=-1.0), ValueError, "step_size out of bounds"),
        (dict(p=-0.1), ValueError, "p out of bounds"),
        (dict(p=1.5), ValueError, "p out of bounds"),
        (dict(temperature=0.0), ValueError, "temperature out of bounds"),
        (dict(norm="l1"), ValueError, "norm: expected one of"),
        (dict(mean=0.5), ValueError, "mean, std: give both"),
        (dict(std=0.5), ValueError, "mean, std: give both"),
        (dict(mean=[0.5, 0.5], std=0.5), ValueError, r"mean: expected 1 or 3 values"),
        (dict(mean=0.5, std=[0.5, 0.0, 0.5]), ValueError, "std: expected positive values"),
        (dict(generator="0"), TypeError, "generator: expected a torch.Generator or an int seed"),
        (dict(generator=0.5), TypeError, "generator: expected a torch.Generator or an int seed"),
        (dict(generator=True), TypeError, "generator: expected a torch.Generator or an int seed"),
        (dict(generator=2**70), ValueError, r"generator: expected an int seed in \[-2\*\*63, 2\*\*64\)"),
        (dict(eps=float("inf")), ValueError, "eps out of bounds. Expected a finite number"),
        (dict(eps=float("nan")), ValueError, "eps out of bounds"),
        (dict(step_size=float("inf")), ValueError, "step_size out of bounds"),
        (dict(temperature=float("inf")), ValueError, "temperature out of bounds"),
        (dict(mean=float("nan"), std=0.5), ValueError, "mean: expected finite values"),
        (dict(mean=0.5, std=float("inf")), ValueError, "std: expected finite values"),
        (dict(mean="abc", std=0.5), TypeError, "mean: expected a number or one number per channel, got 'abc'"),
        (dict(mean=0.5, std=[0.2, None, 0.2]), TypeError, "std: expected a number or one number per channel"),
        (dict(p=2.0), ValueError, r"p out of bounds. Expected a finite number in \[0.0, 1.0\], got 2.0"),
        (dict(step_size=0.0), ValueError, "step_size: 0 with eps=0.1 and no random_start would leave every sample "
                                          "unchanged"),
        (dict(clamp="no"), TypeError, "clamp: expected True or False, got 'no'"),  # bool("no") is True
        (dict(random_start="False"), TypeError, "random_start: expected True or False"),
        (dict(use_adversarial_bn=1), TypeError, "use_adversarial_bn: expected True or False"),
        (dict(check_finite="yes"), TypeError, "check_finite: expected True or False"),
    ],
)
def test_bad_arguments(vae, encoder, options, error, message):
    with pytest.raises(error, match=message):
        IDAATransform(vae, encoder, **options)


def test_bad_components(vae, x):
    with pytest.raises(TypeError, match="vae: expected an IdentityVAE"):
        IDAATransform(nn.Identity())
    with pytest.raises(TypeError, match="encoder: expected a callable"):
        IDAATransform(vae, encoder=3)
    with pytest.raises(TypeError, match="loss_fn: expected a callable"):
        IDAATransform(vae, loss_fn="nt_xent")
    with pytest.raises(TypeError, match="loss_fn: expected a callable"):
        IDAATransform(vae, loss_fn=lambda a, b: b.sum())(x, loss_fn=1.0)


def test_no_encoder_and_no_loss(make_idaa, x):
    idaa = make_idaa()
    with pytest.raises(ValueError, match="no loss to increase"):
        idaa(x)
    assert idaa.decompose(x).reconstruction.shape == x.shape  # decomposing needs no loss


def test_bad_anchor(make_idaa, eval_encoder, x):
    with pytest.raises(ValueError, match="anchor: expected encoder\\(x\\), a tensor with 8 rows"):
        make_idaa(eval_encoder)(x, anchor=torch.zeros(7, 16))
    with pytest.raises(ValueError, match="anchor: expected encoder\\(x\\)"):
        make_idaa(eval_encoder)(x, anchor=[0.0] * 8)


# -- copying and serialisation -------------------------------------------------------------------------------------


def test_inference_mode_is_a_clear_error(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="takes a gradient, which torch.inference_mode\\(\\) forbids"):
            idaa(x)
        assert idaa.decompose(x).reconstruction.shape == x.shape  # decomposing needs no gradient


@pytest.mark.parametrize(
    "output", [lambda e: (e, e), lambda e: {"z": e}], ids=["tuple", "dict"],
)
def test_encoder_returning_a_container_is_a_clear_error(make_idaa, eval_encoder, x, output):
    wrapped = lambda v: output(eval_encoder(v))  # noqa: E731
    with pytest.raises(TypeError, match="return one tensor of embeddings.*pass loss_fn="):
        make_idaa(wrapped, eps=0.5)(x)


@pytest.mark.parametrize(
    "anchor, message",
    [
        (torch.zeros(8), r"anchor: expected encoder\(x\), a tensor with 8 rows \(B, D\), got \(8,\)"),
        (torch.zeros(8, 5), r"anchor: expected encoder\(x\), shaped like encoder\(x_adv\) \(8, 16\)"),
    ],
    ids=["1-D", "wrong-width"],
)
def test_misshaped_anchor(make_idaa, eval_encoder, x, anchor, message):
    with pytest.raises(ValueError, match=message):
        make_idaa(eval_encoder, eps=0.5)(x, anchor=anchor)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_is_an_error_not_a_no_op(make_idaa, x, bad):
    with pytest.raises(ValueError, match=f"loss_fn: the loss is {bad}"):
        make_idaa(loss_fn=lambda a, b: (b * bad).sum(), eps=0.5)(x)


@pytest.mark.parametrize("norm, eps", [("l2", 1e30), ("linf", 1e38)])
def test_eps_that_overflows_the_latent_is_an_error(make_idaa, x, norm, eps):
    with pytest.raises(ValueError, match=f"overflows the VAE's torch.float32 latent with norm='{norm}'"):
        make_idaa(loss_fn=linear_loss(x), eps=eps, norm=norm)(x)


def test_inputs_outside_the_pixel_range_they_claim_are_refused_not_attacked_into_a_no_op(make_idaa, x):
    idaa = make_idaa(loss_fn=linear_loss(x), eps=0.5)
    with pytest.raises(ValueError, match=r"inputs reach 25\d\.\d, like 0-255 pixels.*divide the images by 255"):
        idaa(x * 255)
    for inputs in ((x - 0.45) / 0.22, (x - 0.4) / 0.05, x * 5):  # normalised images without mean=/std=, or scaled
        with pytest.raises(ValueError, match=r"well outside the \[0, 1\] pixels expected without mean=/std=.*pass "
                                             r"the same mean= and std="):
            idaa(inputs)
        with pytest.raises(ValueError, match="well outside"):
            idaa.decompose(inputs)
    imagenet = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    mean, std = (torch.tensor(imagenet[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_idaa(loss_fn=linear_loss(x), eps=0.5)(x * 1.4 - 0.2)  # within the slack: accepted
        make_idaa(loss_fn=linear_loss(x), eps=0.5, **imagenet)((x - mean) / std)
    # Through mean=/std=: 0-255 images normalised with [0, 1] statistics, or with 0-255 statistics (mmcv style).
    for inputs, stats in [((x * 255 - mean) / std, imagenet),
                          ((x * 255 - 120) / 58, dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])),
                          ((x - mean) / std * 4, imagenet)]:
        with pytest.raises(ValueError, match=r"through mean= and std=, the inputs are pixels in \[.*well outside "
                                             r"\[0, 1\]; scale the images to \[0, 1\] before normalising"):
            make_idaa(loss_fn=linear_loss(x), eps=0.5, **stats)(inputs)
    bad = ((x - mean) / std).clone()
    bad[0, 2, 0, 0] = float("nan")  # in any channel
    with pytest.raises(ValueError, match="the input contains NaN or Inf values"):
        make_idaa(loss_fn=linear_loss(x), eps=0.5, **imagenet)(bad)


def test_values_are_read_once_where_they_are_not_read_every_call(make_idaa, x, monkeypatch):
    from idaa_transforms import transform

    monkeypatch.setattr(transform, "reads_values", lambda x, check_finite: False)  # as on an accelerator
    idaa = make_idaa(loss_fn=linear_loss(x), eps=0.5)
    with pytest.raises(ValueError, match="like 0-255 pixels"):
        idaa(x * 255)  # the first call is read: one synchronisation, once
    reads = []
    monkeypatch.setattr(transform.torch, "aminmax", lambda t: reads.append(t) or (t.min(), t.max()))
    idaa(x)
    idaa(x)
    assert reads == []  # later calls are not
    opted_out = make_idaa(loss_fn=linear_loss(x), eps=0.5, check_finite=False)
    opted_out(x)
    assert reads == []  # check_finite=False: never read


def test_a_cpu_call_does_not_use_up_the_accelerators_first_read(make_idaa, x):
    idaa = make_idaa(loss_fn=linear_loss(x), eps=0.5)
    idaa(x)  # on the CPU: read because every CPU call is
    assert not idaa._values_seen  # an accelerator's first input will still be read


def test_warnings_point_at_the_callers_line(make_idaa):
    large = torch.rand(2, 3, 128, 96)  # the resolution warning
    idaa = make_idaa(loss_fn=linear_loss(large), eps=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idaa(large)
        nn.Sequential(make_idaa(loss_fn=linear_loss(large), eps=0.5))(large)  # through torch's frames
    assert [w.filename for w in caught] == [__file__, __file__]


def test_adversarial_bn_without_dual_batchnorms_warns_once(make_idaa, x):
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    idaa = make_idaa(plain, eps=0.5, use_adversarial_bn=True)
    with pytest.warns(UserWarning, match=r"use_adversarial_bn=True, but the encoder has no DualBatchNorm"):
        idaa(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idaa(x)  # once
        make_idaa(convert_to_dual_bn(copy.deepcopy(plain)), eps=0.5, use_adversarial_bn=True)(x)


def test_the_encoder_given_as_the_checkpoint_is_a_clear_error():
    with pytest.raises(TypeError, match=r"name_or_path: expected a Hub repo id, a folder or None, got a Conv2d; pass "
                                        r"the model as encoder="):
        IDAATransform.from_pretrained(nn.Conv2d(3, 8, 3))


def test_warns_once_about_inputs_far_above_the_vae_resolution(make_idaa):
    idaa = make_idaa(loss_fn=lambda a, b: b.sum(), eps=0.5)
    with pytest.warns(UserWarning, match="inputs are 128x96 px but the VAE works at 32 px"):
        idaa.decompose(batch(2, 128, 96))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idaa(batch(2, 128, 96))
        make_idaa(loss_fn=lambda a, b: b.sum(), eps=0.5)(batch(2, 64, 64))


def test_positional_loss_fn_is_refused(make_idaa, x):
    with pytest.raises(TypeError, match="keyword-only"):
        make_idaa(eps=0.5)(x, linear_loss(x))


def test_deepcopy(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5, random_start=True, generator=0)
    clone = copy.deepcopy(idaa)
    assert clone.vae is not idaa.vae
    torch.testing.assert_close(clone(x), idaa(x), atol=0, rtol=0)  # generator state copied too
    assert not clone.vae.training


def test_pickle_round_trip(make_idaa, eval_encoder, x):
    idaa = make_idaa(eval_encoder, eps=0.5, generator=0)
    restored = pickle.loads(pickle.dumps(idaa))
    torch.testing.assert_close(restored(x), idaa(x), atol=0, rtol=0)


def test_to_dtype(make_idaa, x):
    encoder = make_encoder().eval().double()
    idaa = make_idaa(encoder, eps=0.0).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in idaa.vae.parameters())
    out = idaa(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x.double(), atol=1e-12, rtol=0)
    adv = make_idaa(encoder, eps=0.5).to(torch.float64)(x.double())
    assert adv.dtype == torch.float64 and (adv - x.double()).abs().max() > 1e-3
    # A float32 batch through a float64 transform still comes back as float32.
    assert make_idaa(encoder.float(), eps=0.5).to(torch.float64)(x).dtype == torch.float32


def test_state_dict_leaves_the_vae_out_and_holders_round_trip(make_idaa, eval_encoder, x):
    """The VAE is a frozen pretrained part: checkpoints of the transform, or of a model holding it, do not store it."""
    idaa = make_idaa(eval_encoder, eps=0.5)
    assert idaa.state_dict() == {}
    holder = Holder(eval_encoder, idaa)
    assert set(holder.state_dict()) == {f"net.{k}" for k in eval_encoder.state_dict()}
    fresh = Holder(make_encoder().eval(), IDAATransform(make_vae(), eps=0.5))
    fresh.load_state_dict(holder.state_dict())  # strict: no missing or unexpected keys
    torch.testing.assert_close(fresh.idaa(x, loss_fn=linear_loss(x)), idaa(x, loss_fn=linear_loss(x)), atol=0, rtol=0)


def test_repr_mentions_options(make_idaa):
    text = repr(make_idaa(eps=0.25, steps=2, norm="l2"))
    assert "eps=0.25" in text and "steps=2" in text and "norm='l2'" in text
    assert "vae=<frozen 32 px, 8 latents>" in text


def test_config_variant_vae(x):
    vae = make_vae(width=16, latent_dim=8, num_res_blocks=1, bottleneck_norm=True, output_norm="tanh_batchnorm")
    idaa = IDAATransform(vae, loss_fn=linear_loss(torch.randn(1, 3, 32, 32)), eps=0.5)
    parts = idaa.decompose(x)
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-6, rtol=0)
    assert idaa(x).shape == x.shape
    assert isinstance(vae.config, VAEConfig)


def test_arguments_that_do_make_sense_are_accepted(vae, encoder):
    IDAATransform(vae, encoder, eps=0.0, step_size=0.0)  # the eps = 0 control
    IDAATransform(vae, encoder, eps=0.1, step_size=0.0, random_start=True)  # a random point in the ball
    IDAATransform(vae, encoder, check_finite=None, clamp=True, random_start=False)


def test_the_encoder_in_the_place_of_the_vae_says_how_to_build_the_transform(encoder):
    with pytest.raises(TypeError, match=r"vae: expected an IdentityVAE, got Sequential; the VAE comes first "
                                        r"\(IDAATransform\(vae, encoder=model\)\), or load one with "
                                        r"IDAATransform.from_pretrained\(encoder=model\)"):
        IDAATransform(encoder)
