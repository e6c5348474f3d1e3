"""The precision of the adversaries' passes under float16 autocast.

Under ``torch.autocast`` with float16 (the default dtype of ``torch.autocast("cuda")`` and of Lightning's
``precision="16-mixed"``) the attack's backward pass runs in float16, where values below 6e-8 flush to zero, and the
gradients of a batch-averaged SSL loss are that small. Measured on the CPU (the shipped VAE, NT-Xent, freshly
initialised encoders with a linear head): with small_cnn at batch 256 every latent gradient entry came out zero, with
ResNet-18 at batch 32 12% did, so the attack did nothing, or less than it should. Loss scaling
(``torch.amp.GradScaler``'s cure for training) found no factor safe for every loss within one call: the factors that
lifted the latent's gradients under NT-Xent overflowed the gradients inside cosine and squared losses in the same
trials, and an overflowed step can only be skipped.

So, with the built-in loss (whose every part the adversary knows), the passes run under bfloat16 autocast instead,
which has float32's range and float16's tensor-core speed (float32 on CUDA GPUs before Ampere, which lack bfloat16),
with autocast's weight cache off so that the caller's float16 cache is neither read nor changed. A user's
``loss_fn`` may rely on float16 (a ``.half()`` model, float16 tensors of its own), so it is left in the caller's
precision, with a warning (:data:`FLOAT16_ADVICE`), as are float16 inputs, encoders and VAEs.

Example:
    >>> import torch
    >>> with torch.autocast("cpu", dtype=torch.float16), attack_precision(torch.device("cpu")):
    ...     torch.get_autocast_dtype("cpu")
    torch.bfloat16
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from idaa_transforms.attack import modules_behind, warn_once

__all__ = ["FLOAT16_ADVICE", "adversary_precision", "attack_precision", "float16_autocast"]

#: What a warning says where the adversary keeps the caller's float16 autocast.
FLOAT16_ADVICE = (
    "under float16 autocast the attack's gradient is computed in float16, where the small gradients of a "
    "batch-averaged loss flush to zero and the attack changes little or nothing; use bfloat16 autocast "
    "(torch.autocast(..., dtype=torch.bfloat16)), or call the transform outside autocast."
)


def float16_autocast(device: torch.device) -> bool:
    """Whether autocast to float16 is on for ``device``'s type."""
    try:
        return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16
    except RuntimeError:  # a device type autocast does not know (meta...): no autocast there
        return False


def adversary_precision(x: Tensor, encoder: Any, builtin_loss: bool, who: str, warned: set[str],
                        vae: nn.Module | None = None) -> AbstractContextManager[None]:
    """The precision an adversary's passes run in: :func:`attack_precision` for the built-in loss with an ``x``,
    encoder and ``vae`` wider than float16; the caller's for everything else, with a warning (once) under float16
    autocast."""
    if not float16_autocast(x.device):
        return nullcontext()
    modules = [*modules_behind(encoder), *([vae] if vae is not None else [])]
    half = x.dtype == torch.float16 or any(p.dtype == torch.float16 for module in modules
                                           for p in module.parameters())
    if builtin_loss and not half:
        return attack_precision(x.device)
    warn_once(warned, "float16", f"{who}: {FLOAT16_ADVICE}")
    return nullcontext()


@contextmanager
def attack_precision(device: torch.device) -> Iterator[None]:
    """Within: bfloat16 autocast without the weight cache (or no autocast, on devices without bfloat16) where
    float16 autocast is on for ``device``; otherwise the caller's settings, untouched."""
    if not float16_autocast(device):
        yield
        return
    kind = device.type
    index = device.index if device.index is not None or kind != "cuda" else torch.cuda.current_device()
    if _supports_bfloat16(kind, index):
        with torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=False):
            yield
    else:
        with torch.autocast(kind, enabled=False):
            yield


@functools.lru_cache(maxsize=None)
def _supports_bfloat16(kind: str, index: int | None) -> bool:
    """bfloat16 autocast at full speed: the CPU, and CUDA devices of compute capability 8.0 (Ampere) or later."""
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.get_device_capability(index) >= (8, 0)
    return False
