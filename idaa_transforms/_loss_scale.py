"""Loss scaling for the adversaries' gradients when the backward pass runs in float16.

Under ``torch.autocast`` with float16 (the default dtype of ``torch.autocast("cuda")``), or with float16 inputs or
models, the backward pass runs in float16, where values below 6e-8 flush to zero. The gradient of a batch-averaged
SSL loss is that small: at a batch of 512 (CIFAR ResNet-18 encoder, the shipped VAE, the built-in NT-Xent) a quarter of
the latent gradient's entries came out exactly zero, so those latents did not move, and a third of the signs
disagreed with float32's. The adversaries step along the gradient's sign (or its direction), which a positive factor
does not change, so they multiply the loss by a power of two before differentiating, as ``torch.amp.GradScaler``
does for training. The factor lives on the device and adapts there, without a host synchronisation: after each
gradient it moves (by a power of two) so that the largest entry sits near :attr:`LossScale.TARGET`, far from both
ends of float16's range. A gradient that overflowed all the same is dropped (that step leaves the latent where it
was; a warning says so where values may be read, as on the CPU) and the factor falls by :attr:`LossScale.MAX_CHANGE`.

Example:
    >>> import torch
    >>> scale = LossScale()
    >>> z = torch.ones(4, 8, dtype=torch.float16, requires_grad=True)
    >>> grad = scale.gradient((z.float() * 1e-9).sum(), z, batch_size=4)  # 1e-9 is zero in float16
    >>> bool((grad > 0).all())
    True
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from idaa_transforms.attack import loss_gradient

__all__ = ["LossScale", "backward_in_float16"]


def backward_in_float16(*tensors: Tensor) -> bool:
    """Whether a gradient through ``tensors`` is computed in float16: one of them is float16, or autocast to float16
    is on for their device."""
    device = tensors[0].device.type
    if any(t.dtype == torch.float16 for t in tensors):
        return True
    return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16


class LossScale:
    """The loss factor of one adversary, kept on the device between calls (see the module's docstring)."""

    #: the largest gradient entry the factor aims at (intermediate gradients can be a few hundred times larger).
    TARGET = 2.0**-2
    #: the first factor, per sample: a batch-averaged loss has gradients that shrink as 1 / batch size.
    FIRST_PER_SAMPLE = 2.0**6
    #: the most the factor changes after one gradient, and what it falls by after an overflow.
    MAX_CHANGE = 2.0**8
    _RANGE = (2.0**-64, 2.0**64)

    def __init__(self) -> None:
        self._factor: Tensor | None = None

    def gradient(self, value: Tensor, wrt: Tensor, *, batch_size: int, check_finite: bool = False,
                 inputs: tuple[Tensor, ...] = ()) -> Tensor:
        """``d value / d wrt`` as :func:`~idaa_transforms.attack.loss_gradient` gives it, with ``value`` scaled
        first when the backward pass runs in float16 (``wrt``, one of ``inputs`` or autocast); the result's scale
        is arbitrary, its signs and direction are the gradient's."""
        if not backward_in_float16(wrt, *inputs):
            return loss_gradient(value, wrt, check_finite=check_finite)
        factor = self._factor
        if factor is None or factor.device != wrt.device:
            factor = torch.full((), self.FIRST_PER_SAMPLE * max(batch_size, 1), device=wrt.device)
        grad = loss_gradient(value, wrt, check_finite=check_finite, scale=factor)
        largest = grad.detach().abs().amax().float()  # NaN or inf if the gradient overflowed
        finite = torch.isfinite(largest)
        change = torch.exp2(torch.log2(self.TARGET / largest).round()).clamp(1 / self.MAX_CHANGE, self.MAX_CHANGE)
        self._factor = torch.where(finite, factor * change, factor / self.MAX_CHANGE).clamp(*self._RANGE)
        if check_finite and not bool(finite):  # values may be read here: say so rather than skip in silence
            warnings.warn(
                f"float16 gradient overflowed at loss scale {float(factor):g}; this step was skipped (x_adv == x for "
                f"it) and the scale lowered to {float(self._factor):g} for the next.", RuntimeWarning, stacklevel=3,
            )
        return torch.where(finite, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
