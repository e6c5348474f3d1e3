"""A pixel-space one-step FGSM view, the CLAE-style alternative to IDAA, with the same call signature.

``x_adv = x + eps * sign(dL/dx)``: the same loss, the same single gradient step, but in pixel space instead of the
VAE's latent space. It slots in wherever an :class:`~idaa_transforms.IDAATransform` is called
(``view(x, loss_fn=None, anchor=None)``), so a trainer can swap one for the other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from idaa_transforms.attack import LossFn, encoder_loss, loss_gradient

__all__ = ["PixelFGSM", "matched_pixel_eps"]


class PixelFGSM(nn.Module):
    """One signed-gradient step on the pixels that increases ``L(x, x_adv)``; detached output.

    Args:
        encoder: the model under training (built-in loss: NT-Xent between ``encoder(x)`` and ``encoder(x_adv)``);
            referenced, not owned: its grads, modes and BatchNorm statistics are left untouched.
        loss_fn: ``loss_fn(x, x_adv) -> scalar`` instead of the built-in loss.
        eps: L-inf size of the step, in the input's units.
        temperature: NT-Xent temperature of the built-in loss.
        use_adversarial_bn: run the encoder through its adversarial BatchNorms.

    Example:
        >>> encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        >>> x = torch.rand(4, 3, 8, 8)
        >>> x_adv = PixelFGSM(encoder, eps=0.01)(x)
        >>> round(float((x_adv - x).abs().max()), 4)
        0.01
    """

    def __init__(self, encoder: Callable[[Tensor], Tensor] | None = None, loss_fn: LossFn | None = None, *,
                 eps: float = 0.03, temperature: float = 0.5, use_adversarial_bn: bool = False) -> None:
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps out of bounds. Expected a number >= 0, got {eps!r}.")
        if encoder is None and loss_fn is None:
            raise ValueError("PixelFGSM needs a loss to increase: pass encoder=<model> or loss_fn=<callable>.")
        self.__dict__["encoder"] = encoder  # referenced, not registered
        self.loss_fn = loss_fn
        self.eps = float(eps)
        self.temperature = float(temperature)
        self.use_adversarial_bn = bool(use_adversarial_bn)

    def forward(self, x: Tensor, loss_fn: LossFn | None = None, anchor: Tensor | None = None) -> Tensor:
        user_loss = loss_fn or self.loss_fn
        with torch.enable_grad():
            x_adv = x.detach().requires_grad_(True)
            if user_loss is not None:
                value = user_loss(x, x_adv)
            else:
                value = encoder_loss(self.encoder, x, x_adv, anchor, self.temperature, self.use_adversarial_bn)
            grad = loss_gradient(value, x_adv)
        return (x + self.eps * grad.sign()).detach()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def matched_pixel_eps(x: Tensor, x_adv: Tensor) -> float:
    """The pixel FGSM ``eps`` whose perturbation has the same mean L2 norm per image as ``x_adv - x``.

    A signed step of size ``eps`` on ``D`` pixels has L2 norm ``eps * sqrt(D)``; matching L2 norms gives both attacks
    the same strength budget.
    """
    norms = (x_adv - x).flatten(1).norm(dim=1)
    return float(norms.mean()) / x[0].numel() ** 0.5
