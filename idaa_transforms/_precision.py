"""The precision of the adversaries' gradient passes under float16 autocast.

Under ``torch.autocast`` with float16 (the default dtype of ``torch.autocast("cuda")`` and of Lightning's
``precision="16-mixed"``) the attack's backward pass would run in float16, where values below 6e-8 flush to zero, and
the gradient of a batch-averaged SSL loss with respect to the latent is that small: at a batch of 512 (CIFAR
ResNet-18 encoder, the shipped VAE, the built-in NT-Xent) a quarter of the latent gradient's entries came out exactly
zero, so those latents did not move, and a third of the signs disagreed with float32's. Loss scaling (as
``torch.amp.GradScaler`` does for training) is no safe fix for a single call without a host synchronisation: the
gradients inside the loss were some 10^5 times the latent's in our trials, so a factor that lifted the one overflowed
the other, and an overflowed step can only be skipped. So the adversaries run their passes under bfloat16 autocast
instead, which has float32's range (and float16's tensor-core speed where it is supported), or in float32 where
bfloat16 is not supported (CUDA GPUs before Ampere). Float16 *tensors* (a ``.half()`` model, float16 inputs) are the
caller's explicit choice and are left as they are.

Example:
    >>> import torch
    >>> with torch.autocast("cpu", dtype=torch.float16), attack_precision(torch.device("cpu")):
    ...     torch.get_autocast_dtype("cpu")
    torch.bfloat16
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["attack_precision"]


@contextmanager
def attack_precision(device: torch.device) -> Iterator[None]:
    """Within: bfloat16 autocast (or none, on devices without bfloat16) where float16 autocast is on for
    ``device``; otherwise the caller's settings, untouched."""
    kind = device.type
    try:
        in_float16 = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
    except RuntimeError:  # a device type autocast does not know (meta...): no autocast there
        in_float16 = False
    if not in_float16:
        yield
        return
    if _supports_bfloat16(kind, device.index if device.index is not None else _current(kind)):
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
    else:
        with torch.autocast(kind, enabled=False):
            yield


def _current(kind: str) -> int | None:
    return torch.cuda.current_device() if kind == "cuda" else None


@functools.lru_cache(maxsize=None)
def _supports_bfloat16(kind: str, index: int | None) -> bool:
    """bfloat16 autocast at full speed: the CPU, and CUDA devices of compute capability 8.0 (Ampere) or later."""
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.get_device_capability(index) >= (8, 0)
    return False
