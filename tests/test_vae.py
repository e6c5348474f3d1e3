"""IdentityVAE and VAEConfig: validation, shapes, layout options, the loss, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_vae
from torch import nn

from idaa_transforms import IdentityVAE, VAEConfig, VAEEncoding, VAEOutput, vae_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


# -- config ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(image_size=30), r"image_size: expected a multiple of 2 \*\* num_downsamplings = 4, got 30"),
        (dict(image_size=64, num_downsamplings=3, width=130), r"width: expected a multiple of 2 \*\* \(num_downsamplings - 1\) = 4"),
        (dict(output_norm="sigmoid"), r"output_norm: expected one of \('tanh', 'tanh_batchnorm'\), got 'sigmoid'"),
        (dict(input_mean=(0.5, 0.5)), r"input_mean: expected 3 values \(one per channel\), got 2"),
        (dict(input_std=(0.5,) * 4), r"input_std: expected 3 values \(one per channel\), got 4"),
        (dict(input_std=(0.5, 0.0, 0.5)), r"input_std: expected positive values"),
        (dict(latent_dim=0), r"latent_dim: expected a positive int, got 0"),
        (dict(width=16.0), r"width: expected a positive int, got 16.0"),
        (dict(in_channels=True), r"in_channels: expected a positive int, got True"),
        (dict(num_res_blocks=-1), r"num_res_blocks: expected an int >= 0, got -1"),
        (dict(num_res_blocks=1.5), r"num_res_blocks: expected an int >= 0, got 1.5"),
        (dict(num_res_blocks="2"), r"num_res_blocks: expected an int >= 0, got '2'"),
        (dict(bottleneck_norm="yes"), r"bottleneck_norm: expected true or false, got 'yes'"),
        (dict(bottleneck_norm=1), r"bottleneck_norm: expected true or false, got 1"),
        (dict(output_norm=None), r"output_norm: expected one of \('tanh', 'tanh_batchnorm'\), got None"),
        (dict(input_mean=None), r"input_mean: expected 3 finite numbers \(one per channel\), got None"),
        (dict(input_mean="abc"), r"input_mean: expected 3 finite numbers \(one per channel\), got 'abc'"),
        (dict(input_mean=0.5), r"input_mean: expected 3 finite numbers \(one per channel\), got 0\.5"),
        (dict(input_mean=(0.5, None, 0.5)), r"input_mean: expected 3 finite numbers"),
        (dict(input_mean=(0.5, True, 0.5)), r"input_mean: expected 3 finite numbers"),
        (dict(input_mean=(0.5, float("nan"), 0.5)), r"input_mean: expected 3 finite numbers .*got \(0\.5, nan, 0\.5\)"),
        (dict(input_std=(0.5, 0.5, float("inf"))), r"input_std: expected 3 finite numbers .*got \(0\.5, 0\.5, inf\)"),
    ],
)
def test_config_validation(options, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**options)


def test_config_single_channel():
    cfg = VAEConfig(in_channels=1, input_mean=(0.5,), input_std=(0.25,), width=16, latent_dim=8)
    vae = IdentityVAE(cfg).eval()
    assert vae.decode(vae.encode(torch.rand(2, 1, 32, 32)).mu).shape == (2, 1, 32, 32)


def test_config_derived_values():
    cfg = VAEConfig(image_size=64, num_downsamplings=3, width=64)
    assert cfg.feature_size == 8
    assert cfg.stage_channels() == [16, 32, 64]
    assert VAEConfig().stage_channels() == [64, 128]


def test_from_dict_round_trip_and_unknown_keys():
    cfg = VAEConfig(width=16, latent_dim=8, bottleneck_norm=True, input_mean=(0.4, 0.5, 0.6))
    values = cfg.to_dict()
    assert values["input_mean"] == [0.4, 0.5, 0.6]  # JSON-friendly
    assert VAEConfig.from_dict(values) == cfg
    with pytest.raises(ValueError, match=r"my.json: unknown VAE config key\(s\) \['dropout', 'zeta'\]"):
        VAEConfig.from_dict({**values, "zeta": 1, "dropout": 0.1}, source="my.json")
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig.from_dict({"image_size": 33})


# -- shapes ----------------------------------------------------------------------------------------------------------


def test_default_config_shapes():
    vae = IdentityVAE().eval()
    assert vae.config == VAEConfig()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        enc = vae.encode(x)
        assert isinstance(enc, VAEEncoding)
        assert enc.mu.shape == enc.logvar.shape == (2, 512)
        assert vae.decode(enc.mu).shape == (2, 3, 32, 32)


def test_larger_variant_shapes():
    vae = IdentityVAE(VAEConfig(image_size=64, num_downsamplings=3, width=32, latent_dim=16)).eval()
    assert len(vae.encoder_stages) == 3 and len(vae.decoder_stages) == 3
    with torch.no_grad():
        enc = vae.encode(torch.rand(2, 3, 64, 64))
        assert enc.mu.shape == (2, 16)
        assert vae.decode(enc.mu).shape == (2, 3, 64, 64)
    with pytest.raises(RuntimeError):
        vae.encode(torch.rand(2, 3, 32, 32))  # a VAE runs at its own resolution


def test_forward_output(vae):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = vae(x)
    assert isinstance(out, VAEOutput)
    assert out.reconstruction.shape == x.shape
    assert out.z.shape == out.mu.shape == out.logvar.shape == (3, 8)


# -- layout options --------------------------------------------------------------------------------------------------


def test_bottleneck_norm_adds_batchnorms():
    plain = IdentityVAE(VAEConfig(width=16, latent_dim=8))
    normed = IdentityVAE(VAEConfig(width=16, latent_dim=8, bottleneck_norm=True))
    assert count_bn(normed) == count_bn(plain) + 2
    assert isinstance(normed.encoder_trunk[-1], nn.BatchNorm2d)
    assert not isinstance(plain.encoder_trunk[-1], nn.BatchNorm2d)
    assert isinstance(normed.decoder_trunk[0], nn.BatchNorm2d)
    assert not isinstance(plain.decoder_trunk[0], nn.BatchNorm2d)
    x = torch.rand(2, 3, 32, 32)
    normed.eval()
    with torch.no_grad():
        assert normed.decode(normed.encode(x).mu).shape == x.shape


def test_tanh_output_is_bounded(vae):
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad():
        out = vae.decode(z)
    assert out.abs().max() <= 1.0
    assert out.abs().max() > 0.9  # saturating, so the bound is really exercised
    assert vae.output_norm is None


def test_tanh_batchnorm_output():
    vae = IdentityVAE(VAEConfig(width=16, latent_dim=8, output_norm="tanh_batchnorm")).eval()
    assert isinstance(vae.output_norm, nn.BatchNorm2d)
    with torch.no_grad():
        vae.output_norm.weight.fill_(3.0)
        out = vae.decode(torch.randn(4, 8) * 100)
    assert out.abs().max() > 1.0  # the affine BatchNorm after tanh leaves [-1, 1]
    assert "output_norm.running_mean" in vae.state_dict()


# -- loss --------------------------------------------------------------------------------------------------------


def test_vae_loss_is_mse_for_standard_posterior():
    x = torch.rand(2, 3, 4, 4)
    recon = torch.rand(2, 3, 4, 4)
    zeros = torch.zeros(2, 8)
    expected = ((x - recon) ** 2).mean()
    torch.testing.assert_close(vae_loss(x, recon, zeros, zeros), expected)
    torch.testing.assert_close(vae_loss(x, recon, zeros, zeros, kl_weight=5.0), expected)


def test_vae_loss_kl_normalisation():
    # B=2, D=4, mu=1, logvar=0: each latent contributes -0.5 * (1 + 0 - 1 - 1) = 0.5, so the KL sum is 4.
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)
    x = torch.zeros(2, 3, 5, 5)
    assert float(vae_loss(x, x, mu, logvar, kl_weight=1.0)) == pytest.approx(4 / (2 * 3 * 4))
    assert float(vae_loss(x, x, mu, logvar)) == pytest.approx(0.1 * 4 / 24)  # default kl_weight
    x1 = torch.zeros(2, 1, 5, 5)  # divided by B * C * latent_dim: C matters, the pixels do not
    assert float(vae_loss(x1, x1, mu, logvar, kl_weight=1.0)) == pytest.approx(4 / 8)


def test_vae_loss_hand_computed():
    x = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 3.0]]]])  # (2, 1, 1, 2)
    recon = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 1.0]]]])
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 1.0]])
    logvar = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.0, 0.0]])
    mse = (1 + 0 + 0 + 4) / 4
    kl = 0.0
    for m_row, lv_row in zip(mu.tolist(), logvar.tolist()):
        for m, lv in zip(m_row, lv_row):
            kl += -0.5 * (1 + lv - m * m - math.exp(lv))
    kl /= 2 * 1 * 3
    assert float(vae_loss(x, recon, mu, logvar, kl_weight=0.3)) == pytest.approx(mse + 0.3 * kl, rel=1e-6)


# -- sampling --------------------------------------------------------------------------------------------------------


def test_train_mode_samples_eval_mode_uses_mean():
    vae = make_vae()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        vae.eval()
        a, b = vae(x), vae(x)
        assert torch.equal(a.z, a.mu) and torch.equal(a.reconstruction, b.reconstruction)
        torch.testing.assert_close(a.reconstruction, vae.decode(vae.encode(x).mu))
        vae.train()
        c, d = vae(x), vae(x)
        assert not torch.equal(c.z, d.z)
        assert not torch.equal(c.z, c.mu)
        assert not torch.allclose(c.reconstruction, d.reconstruction)
        # The sample is mu + sigma * noise: its spread follows logvar.
        spread = (c.z - c.mu) / torch.exp(0.5 * c.logvar)
        assert spread.abs().max() < 6
        e = vae(x, generator=torch.Generator().manual_seed(0))
        f = vae(x, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(e.z - e.mu, f.z - f.mu)


def test_encoding_sample():
    enc = VAEEncoding(torch.full((1000, 2), 3.0), torch.full((1000, 2), math.log(4.0)))
    z = enc.sample(torch.Generator().manual_seed(0))
    assert abs(float(z.mean()) - 3.0) < 0.2
    assert abs(float(z.std()) - 2.0) < 0.2


# -- posterior mean --------------------------------------------------------------------------------------------------


def test_posterior_mean_is_mu_without_the_logvar_head(vae):
    calls = []
    vae.fc_logvar.register_forward_hook(lambda *args: calls.append(1))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mu = vae.posterior_mean(x)
        assert calls == []
        torch.testing.assert_close(mu, vae.encode(x).mu, atol=0, rtol=0)
    assert calls == [1]


def test_posterior_mean_follows_an_overridden_encode(vae):
    class Shifted(IdentityVAE):
        def encode(self, x):
            enc = super().encode(x)
            return VAEEncoding(enc.mu + 1, enc.logvar)

    shifted = Shifted(vae.config).eval()
    shifted.load_state_dict(vae.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(shifted.posterior_mean(x), vae.posterior_mean(x) + 1)
        vae.encode = lambda v: VAEEncoding(torch.zeros(v.shape[0], 8), torch.zeros(v.shape[0], 8))
        assert torch.equal(vae.posterior_mean(x), torch.zeros(2, 8))


def test_posterior_mean_has_gradients(vae):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    vae.posterior_mean(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_pretrained_onto_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    vae = make_vae()
    with pytest.raises(FileExistsError, match="'.*afile' is a file; give a folder"):
        vae.save_pretrained(tmp_path / "afile")
    with pytest.raises(FileExistsError, match="a part of .* is a file"):
        vae.save_pretrained(tmp_path / "afile" / "inner")
