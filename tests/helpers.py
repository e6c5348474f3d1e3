"""Tiny models, batches and image folders shared by the tests (import with ``from helpers import ...``); every model
here runs in milliseconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from idaa_transforms import IdentityVAE, VAEConfig

TINY = dict(width=16, latent_dim=8)


def make_vae(seed: int = 0, **overrides) -> IdentityVAE:
    """A tiny randomly initialised VAE (32 px, 16 channels, 8 latents) in eval mode, deterministic per seed."""
    torch.manual_seed(seed)
    vae = IdentityVAE(VAEConfig(**{**TINY, **overrides}))
    # Non-trivial BatchNorm statistics, so that eval-mode outputs depend on them.
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return vae.eval()


def make_encoder(seed: int = 1, out_features: int = 16) -> nn.Sequential:
    """A tiny conv encoder with a BatchNorm, in train mode, with non-default running statistics."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, out_features),
        nn.BatchNorm1d(out_features),
    )
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return encoder.train()


def to_pixels(vae: IdentityVAE, z: torch.Tensor) -> torch.Tensor:
    """``decode(z)`` mapped from the VAE's space ((p - 0.5) / 0.5 by default) back to [0, 1] pixels, by hand."""
    mean = torch.tensor(vae.config.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.input_std).view(1, -1, 1, 1)
    with torch.no_grad():
        return vae.decode(z) * std + mean


def batch(b: int = 8, h: int = 32, w: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


#: The smallest useful training run: 80 photo crops, one epoch of small_cnn steps, a short probe.
TINY_RUN = dict(dataset="photos", arch="small_cnn", crops_per_photo=16, batch_size=32, epochs=1, probe_steps=20,
                knn_k=20, device="cpu", no_progress=True)


def dies_writing(victim: str):
    """An ``open`` for ``_files`` whose files named like ``victim`` write half their bytes, then the run is killed."""
    real_open = open

    def opener(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and victim in Path(file).name:
            write = handle.write

            def write_half_then_die(data):
                write(data[: len(data) // 2])
                raise KeyboardInterrupt("killed mid-write")

            handle.write = write_half_then_die
        return handle

    return opener


def write_class_folders(root, classes, per_class=2, size=32, fmt="jpg", splits=("train", "test")):
    """``root/<split>/<class>/<i>.<fmt>``, each image a flat colour that encodes its class (red channel)."""
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (10 * label, 100 + i, 50)).save(folder / f"{i:04d}.{fmt}",
                                                                              quality=100)
