"""Shared fixtures; the tiny models and batches behind them live in ``helpers.py`` (``from helpers import ...``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import batch, make_encoder, make_vae
from idaa_transforms import IDAATransform, IdentityVAE


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread: for tiny tensors extra threads only add synchronisation, which becomes
    very slow when other processes compete for the cores. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def vae() -> IdentityVAE:
    return make_vae()


@pytest.fixture
def encoder() -> nn.Sequential:
    return make_encoder()


@pytest.fixture
def eval_encoder() -> nn.Sequential:
    return make_encoder().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return batch()


@pytest.fixture
def make_idaa(vae):
    """``make_idaa(**options)``: an :class:`IDAATransform` on the shared tiny VAE."""

    def build(encoder=None, loss_fn=None, **options) -> IDAATransform:
        return IDAATransform(vae, encoder=encoder, loss_fn=loss_fn, **options)

    return build


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> str:
    """A tiny VAE checkpoint folder: runs that use it test the plumbing, not the shipped VAE's quality."""
    folder = tmp_path_factory.mktemp("tiny-vae")
    make_vae().save_pretrained(folder)
    return str(folder)
