"""A pixel-space one-step FGSM view, the CLAE-style alternative to IDAA, behind the same :class:`Adversary` protocol.

``x_adv = x + eps * sign(dL/dx)``: the same loss, the same single gradient step, but in pixel space instead of the
VAE's latent space. It is called like an :class:`~idaa_transforms.IDAATransform`
(``view(x, *, loss_fn=None, anchor=None)``), so a trainer can swap one for the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from idaa_transforms._precision import adversary_precision
from idaa_transforms.attack import (
    LossFn,
    batch_of_one_explained,
    check_anchor,
    check_encoder,
    check_images,
    encoder_loss,
    loss_gradient,
    reads_values,
    require_autograd,
    resolve_loss,
    warn_without_dual_bn,
    warn_without_modules,
)

__all__ = ["PixelFGSM", "matched_pixel_eps"]


class PixelFGSM(nn.Module):
    """One signed-gradient step on the pixels that increases ``L(x, x_adv)``; detached output.

    Args:
        encoder: the model under training (built-in loss: NT-Xent between ``encoder(x)`` and ``encoder(x_adv)``),
            a module or a callable over one, as for :class:`~idaa_transforms.IDAATransform`; referenced, not owned:
            its grads, modes and BatchNorm statistics are left untouched, also during calls of a ``loss_fn``.
        loss_fn: ``loss_fn(x, x_adv) -> scalar`` instead of the built-in loss.
        eps: L-inf size of the step, in the input's units.
        temperature: NT-Xent temperature of the built-in loss.
        use_adversarial_bn: run the encoder through its adversarial BatchNorms.
        check_finite: read the input's and the loss's values to reject NaN/Inf and a gradient that is zero
            everywhere; ``None`` checks CPU tensors only (on an accelerator the check forces a host-device
            synchronisation).

    Shape:
        - Input: ``(B, C, H, W)`` or ``(C, H, W)``, any floating dtype.
        - Output: like the input, detached.

    Raises:
        ValueError: for arguments out of range, inputs of the wrong rank or values, a bad ``anchor`` or loss.
        TypeError: for non-tensor or non-floating-point inputs, or non-callable encoders and losses.
        RuntimeError: when called under ``torch.inference_mode()``, which forbids the gradient the step takes.

    Example:
        >>> encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        >>> x = torch.rand(4, 3, 8, 8)
        >>> x_adv = PixelFGSM(encoder, eps=0.01)(x)
        >>> round(float((x_adv - x).abs().max()), 4)
        0.01
    """

    def __init__(self, encoder: Callable[[Tensor], Tensor] | None = None, loss_fn: LossFn | None = None, *,
                 eps: float = 0.03, temperature: float = 0.5, use_adversarial_bn: bool = False,
                 check_finite: bool | None = None) -> None:
        super().__init__()
        for name, value, low in (("eps", eps, 0.0), ("temperature", temperature, 1e-8)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
                raise ValueError(f"{name} out of bounds. Expected a finite number >= {low}, got {value!r}.")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder: expected a callable (an nn.Module), got {type(encoder).__name__}.")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(x, x_adv) -> scalar, got {type(loss_fn).__name__}.")
        self.__dict__["encoder"] = encoder  # referenced, not registered
        self.loss_fn = loss_fn
        self.eps = float(eps)
        self.temperature = float(temperature)
        for name, value in (("use_adversarial_bn", use_adversarial_bn), ("check_finite", check_finite)):
            if not isinstance(value, bool) and not (name == "check_finite" and value is None):
                raise TypeError(f"{name}: expected True or False, got {value!r}.")
        self.use_adversarial_bn = use_adversarial_bn
        self.check_finite = check_finite
        self._warned: set[str] = set()

    def forward(self, x: Tensor, *, loss_fn: LossFn | None = None, anchor: Tensor | None = None) -> Tensor:
        """Return ``x + eps * sign(dL/dx)``, detached (see :class:`~idaa_transforms.attack.Adversary`)."""
        require_autograd("PixelFGSM")
        x, unbatched = check_images(x, "PixelFGSM", self.check_finite)
        loss = resolve_loss(loss_fn if loss_fn is not None else self.loss_fn, self.encoder, self._encoder_loss,
                            "PixelFGSM")
        check_encoder(self.encoder, x, "PixelFGSM", builtin_loss=loss == self._encoder_loss)
        check_anchor(anchor, x, "PixelFGSM")
        warn_without_dual_bn(self.encoder, self.use_adversarial_bn, "PixelFGSM", self._warned)
        warn_without_modules(self.encoder, "PixelFGSM", self._warned)
        if x.shape[0] == 0:
            return x.detach()
        precision = adversary_precision(x, self.encoder, loss == self._encoder_loss, "PixelFGSM", self._warned)
        with torch.enable_grad(), batch_of_one_explained("PixelFGSM"), precision:
            x_adv = x.detach().requires_grad_(True)
            grad = loss_gradient(loss(x, x_adv, anchor), x_adv, check_finite=reads_values(x, self.check_finite))
        out = (x + self.eps * grad.sign()).detach()
        return out.squeeze(0) if unbatched else out

    def _encoder_loss(self, x: Tensor, x_adv: Tensor, anchor: Tensor | None) -> Tensor:
        return encoder_loss(self.encoder, x, x_adv, anchor, self.temperature, self.use_adversarial_bn)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def matched_pixel_eps(x: Tensor, x_adv: Tensor) -> float:
    """The pixel FGSM ``eps`` whose perturbation has the same mean L2 norm per image as ``x_adv - x``.

    A signed step of size ``eps`` on ``D`` pixels has L2 norm ``eps * sqrt(D)``; matching L2 norms gives both attacks
    the same strength budget.

    Example:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> round(matched_pixel_eps(x, x + 0.5), 6)
        0.5
    """
    norms = (x_adv - x).flatten(1).norm(dim=1)
    return float(norms.mean()) / x[0].numel() ** 0.5
