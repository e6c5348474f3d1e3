"""The transform's contract on every available device: CPU always, CUDA where it exists (as torchvision tests do)."""

from __future__ import annotations

import pytest
import torch

from helpers import batch, make_encoder, make_vae
from idaa_transforms import IDAATransform, adversarial_bn, convert_to_dual_bn


def cpu_and_cuda():
    marks = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    return ["cpu", pytest.param("cuda", marks=marks)]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_decomposition_and_output_on_device(device):
    idaa = IDAATransform(make_vae(), encoder=make_encoder().to(device), eps=0.2).to(device)
    x = batch().to(device).to(memory_format=torch.channels_last)
    parts = idaa.decompose(x)
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-5, rtol=0)
    out = idaa(x)
    assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape and not out.requires_grad
    assert (out - x).abs().amax() > 1e-3  # the attack moved the batch
    eps0 = IDAATransform(idaa.vae, encoder=idaa.encoder, eps=0.0)
    torch.testing.assert_close(eps0(x), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_callers_model_left_as_found_on_device(device):
    encoder = convert_to_dual_bn(make_encoder()).to(device)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    idaa = IDAATransform(make_vae(), encoder=encoder, use_adversarial_bn=True).to(device)
    with torch.no_grad():
        idaa(batch().to(device))
    assert all(p.grad is None for p in encoder.parameters())
    assert encoder.training
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, state[k]), k
    with adversarial_bn():  # the caller's own adversarial forward still updates the adversarial statistics
        encoder(batch().to(device))
    assert int(encoder[1].adversarial.num_batches_tracked) == int(state["1.adversarial.num_batches_tracked"]) + 1


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_autocast_and_partial_batch_on_device(device):
    idaa = IDAATransform(make_vae(), encoder=make_encoder().to(device), p=0.5, generator=0).to(device)
    x = batch(b=16).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = idaa(x)
    assert out.dtype == torch.float32
    changed = (out - x).flatten(1).abs().amax(dim=1) > 0
    assert 0 < int(changed.sum()) < 16  # some samples augmented, the rest returned bit for bit


def test_anchor_on_another_device_is_a_clear_error():
    idaa = IDAATransform(make_vae(), encoder=make_encoder())
    with pytest.raises(ValueError, match="anchor: expected a tensor on cpu"):
        idaa(batch(), anchor=torch.zeros(8, 16, device="meta"))
