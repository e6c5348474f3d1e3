"""What every adversary of this package shares: the encoder loss it ascends and the gradient it follows.

:class:`~idaa_transforms.IDAATransform` (latent space) and :class:`~idaa_transforms.pixel_fgsm.PixelFGSM` (pixel
space) both maximise :func:`encoder_loss` (or a user's ``loss_fn``) through :func:`loss_gradient`, and both call the
caller's encoder through :func:`call_without_buffer_updates`, so its BatchNorm statistics are never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from idaa_transforms.bn import adversarial_bn
from idaa_transforms.losses import negative_cosine, nt_xent

__all__ = ["LossFn", "call_without_buffer_updates", "encoder_loss", "loss_gradient"]

#: ``loss_fn(x, x_adv) -> scalar tensor``: the objective an adversary increases.
LossFn = Callable[[Tensor, Tensor], Tensor]


def call_without_buffer_updates(module: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with BatchNorm running statistics left exactly as they were.

    BatchNorms in training mode still normalise with batch statistics, as they would in the caller's own forward
    pass; their running-statistics buffers are hidden for the call (a BatchNorm without them updates nothing), so
    nothing is copied and the module's tensors are never written to.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        >>> _ = call_without_buffer_updates(net, torch.randn(8, 3))
        >>> int(net[1].num_batches_tracked)
        0
    """
    if not isinstance(module, nn.Module):
        return module(*args, **kwargs)
    hidden = {
        f"{name}.{buf}": None
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
        for buf in ("running_mean", "running_var", "num_batches_tracked")
    }
    if not hidden:
        return module(*args, **kwargs)
    return torch.func.functional_call(module, hidden, args, kwargs, strict=False)


def encoder_loss(
    encoder: Callable[[Tensor], Tensor],
    x: Tensor,
    x_adv: Tensor,
    anchor: Tensor | None = None,
    temperature: float = 0.5,
    adversarial: bool = False,
) -> Tensor:
    """The built-in attack objective: NT-Xent between ``encoder(x)`` (or ``anchor``) and ``encoder(x_adv)``.

    The encoder runs without touching its BatchNorm statistics, through its adversarial BatchNorms if
    ``adversarial``; ``anchor`` is detached. With one sample NT-Xent has no negatives, so the negative cosine
    similarity (its alignment term) is used.
    """
    with adversarial_bn(adversarial):
        if anchor is None:
            with torch.no_grad():
                anchor = call_without_buffer_updates(encoder, x)
        embedding = call_without_buffer_updates(encoder, x_adv)
    anchor = anchor.detach().flatten(1)
    embedding = embedding.flatten(1)
    if embedding.shape[0] == 1:
        return negative_cosine(anchor, embedding)
    return nt_xent(anchor, embedding, temperature)


def loss_gradient(value: Tensor, wrt: Tensor) -> Tensor:
    """``d value / d wrt`` for a scalar loss, or a clear error when the loss is not a scalar or does not depend on it."""
    if not isinstance(value, Tensor) or value.ndim != 0:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"loss_fn: expected a scalar tensor (reduce it, e.g. with .mean()), got {got}.")
    grad = torch.autograd.grad(value, wrt, allow_unused=True)[0] if value.requires_grad else None
    if grad is None:
        raise ValueError(
            "loss_fn: the loss has no gradient path to x_adv; compute it from x_adv without detaching, "
            "and do not call the transform's loss under torch.no_grad() inside loss_fn."
        )
    return grad
