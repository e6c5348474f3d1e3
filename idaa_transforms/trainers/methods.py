"""SimCLR and BYOL as modules that know their loss and how IDAA attacks them.

A method is an ``nn.Module`` whose ``forward(view)`` returns a dict of outputs for one batch of views (what the loss
needs), plus:

* ``pair_loss(a, b)``: the self-supervised loss between the outputs of two views of the same images, over the
  global batch when running distributed;
* ``adversarial_view(adversary, x, out)``: the adversarial view of ``x`` (from an
  :class:`~idaa_transforms.attack.Adversary`: an :class:`~idaa_transforms.IDAATransform` or a
  :class:`~idaa_transforms.PixelFGSM`) that increases the method's own loss against ``out`` (the outputs the
  training step already computed for ``x``);
* ``after_step(progress)``: per-step bookkeeping (BYOL's target update).

Example:
    >>> import torch
    >>> method = build_method("simclr", "small_cnn")
    >>> a, b = method(torch.rand(4, 3, 32, 32)), method(torch.rand(4, 3, 32, 32))
    >>> method.pair_loss(a, b).shape
    torch.Size([])
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from idaa_transforms.attack import Adversary, call_without_buffer_updates
from idaa_transforms.bn import adversarial_bn
from idaa_transforms.losses import negative_cosine, nt_xent
from idaa_transforms.trainers.config import METHODS
from idaa_transforms.trainers.distributed import all_gather_with_grad
from idaa_transforms.trainers.models import build_encoder, mlp_head

__all__ = ["METHODS", "SimCLR", "BYOL", "build_method"]

Outputs = dict[str, Tensor]


class SimCLR(nn.Module):
    """SimCLR (Chen et al., 2020): NT-Xent between the projections of two views.

    Args:
        backbone: the encoder whose features are evaluated.
        feature_dim: size of the backbone's features.
        hidden_dim, proj_dim: projection head sizes (512 and 64 for CIFAR in the IDAA paper).
        temperature: NT-Xent temperature (0.5).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 512, proj_dim: int = 64,
                 temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}.")
        self.encoder = nn.Sequential(backbone, mlp_head(feature_dim, hidden_dim, proj_dim))
        self.temperature = float(temperature)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder[0]

    def forward(self, x: Tensor) -> Outputs:
        return {"z": self.encoder(x)}

    def pair_loss(self, a: Outputs, b: Outputs) -> Tensor:
        return nt_xent(all_gather_with_grad(a["z"]), all_gather_with_grad(b["z"]), self.temperature)

    def adversarial_view(self, adversary: Adversary, x: Tensor, out: Outputs) -> Tensor:
        # The adversary's built-in NT-Xent on self.encoder, with the projection of x we already have as anchor.
        return adversary(x, anchor=out["z"].detach())

    def after_step(self, progress: float) -> None:
        pass


class BYOL(nn.Module):
    """BYOL (Grill et al., 2020): an online network predicts an EMA target network's projection of the other view.

    Args:
        backbone, feature_dim: the encoder and the size of its features.
        hidden_dim, proj_dim: projection head and predictor sizes.
        momentum: base EMA momentum of the target, raised to 1 along a cosine over training.

    The moving average covers the target's parameters; its BatchNorm running statistics follow its own forward
    passes (in training mode the target normalises with batch statistics, as in the reference BYOL code).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 512, proj_dim: int = 64,
                 momentum: float = 0.99) -> None:
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}.")
        self.online = nn.Sequential(backbone, mlp_head(feature_dim, hidden_dim, proj_dim))
        self.predictor = mlp_head(proj_dim, hidden_dim, proj_dim)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.momentum = float(momentum)

    @property
    def backbone(self) -> nn.Module:
        return self.online[0]

    def forward(self, x: Tensor, target: bool = True) -> Outputs:
        out = {"p": self.predictor(self.online(x))}
        if target:
            with torch.no_grad():
                out["t"] = self.target(x)
        return out

    def pair_loss(self, a: Outputs, b: Outputs) -> Tensor:
        return negative_cosine(a["p"], b["t"]) + negative_cosine(b["p"], a["t"])

    def adversarial_view(self, adversary: Adversary, x: Tensor, out: Outputs) -> Tensor:
        # Increase the disagreement between the online prediction of x_adv and the target projection of x.
        target = out["t"].detach()

        def loss_fn(_: Tensor, x_adv: Tensor) -> Tensor:
            with adversarial_bn(getattr(adversary, "use_adversarial_bn", False)):
                return negative_cosine(call_without_buffer_updates(self, x_adv, target=False)["p"], target)

        return adversary(x, loss_fn=loss_fn)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the target towards the online network; ``progress`` in [0, 1] raises the momentum to 1."""
        tau = 1 - (1 - self.momentum) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
        torch._foreach_lerp_(list(self.target.parameters()), list(self.online.parameters()), 1 - tau)


def build_method(name: str, arch: str, *, hidden_dim: int = 512, proj_dim: int = 64, temperature: float = 0.5,
                 momentum: float = 0.99) -> SimCLR | BYOL:
    """A fresh method (one of :data:`METHODS`) on a fresh backbone (see :func:`build_encoder`)."""
    backbone, dim = build_encoder(arch)
    if name == "simclr":
        return SimCLR(backbone, dim, hidden_dim, proj_dim, temperature)
    if name == "byol":
        return BYOL(backbone, dim, hidden_dim, proj_dim, momentum)
    raise ValueError(f"method: expected one of {METHODS}, got {name!r}.")
