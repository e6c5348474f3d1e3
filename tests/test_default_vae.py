"""The shipped default VAE loads offline and still measures what its model card reports, on 30 committed CIFAR-10
test images (tests/fixtures/cifar10-sample: 3 per class of the CIFAR-10 JPEG copy's test split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from idaa_transforms import IDAATransform, IdentityVAE
from idaa_transforms._cifar import CIFAR10_CLASSES
from idaa_transforms._image_folders import load_image_folder
from idaa_transforms.data import to_float_images
from idaa_transforms.train_vae import baseline_metrics, colour_ratio, reconstruction_metrics
from idaa_transforms.vae import DEFAULT_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "cifar10-sample" / "test"
SHIPPED = ROOT / "weights" / DEFAULT_CHECKPOINT
# Measured on this sample when the checkpoint was shipped (same functions as below); the model card reports the
# figures on all 10,000 test images (24.35 dB, colour kept 0.878).
SAMPLE_PSNR, SAMPLE_COLOUR = 24.31, 0.846


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> torch.Tensor:
    images, labels = load_image_folder(SAMPLE, CIFAR10_CLASSES, 32, cache_root=tmp_path_factory.mktemp("cache"))
    assert images.shape == (30, 3, 32, 32) and labels.bincount().tolist() == [3] * 10
    return images


def test_the_default_is_the_cifar10_vae_and_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = IdentityVAE.from_pretrained()
    assert DEFAULT_CHECKPOINT == "idaa-vae-cifar10" and vae.config.latent_dim == 512 and vae.config.width == 128
    assert next(vae.parameters()).dtype == torch.float32 and not vae.training
    with safe_open(str(SHIPPED / "model.safetensors"), "pt") as f:  # stored in half precision, loaded in float32
        assert f.get_tensor("fc_mu.weight").dtype == torch.float16


def test_the_default_meets_its_recorded_figures(sample):
    vae = IdentityVAE.from_pretrained()
    psnr = reconstruction_metrics(vae, sample)["psnr"]
    colour = colour_ratio(vae, sample)
    assert psnr == pytest.approx(SAMPLE_PSNR, abs=0.1) and colour == pytest.approx(SAMPLE_COLOUR, abs=0.01)
    assert psnr > baseline_metrics(sample)["downsample_4x_bilinear"] + 1.0


def test_the_model_card_reports_the_held_out_file():
    held = json.loads((SHIPPED / "held_out.json").read_text())
    card = (SHIPPED / "README.md").read_text()
    assert held["count"] == 10000
    assert f"{held['images']['psnr']:.2f}" in card and f"{held['images']['colour_ratio']:.3f}" in card
    assert "CIFAR-10 (JPEG copy)" in card


def test_the_transform_decomposes_with_the_default(sample):
    parts = IDAATransform.from_pretrained().decompose(to_float_images(sample))
    torch.testing.assert_close(parts.reconstruction + parts.residual, to_float_images(sample), atol=1e-5, rtol=0)
