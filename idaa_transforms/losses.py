"""Self-supervised losses that the adversarial step increases and the trainers minimise.

Each loss compares two batches of embeddings row by row (row ``i`` of ``a`` and row ``i`` of ``b`` are two views of
one image) and returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nt_xent", "negative_cosine"]


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent, the normalised-temperature cross-entropy of SimCLR (Chen et al., 2020).

    Over the ``2B`` embeddings, each one must pick its partner view among the other ``2B - 1`` by cosine similarity
    divided by ``temperature``. With ``B == 1`` there are no negatives and the loss is identically zero.

    Args:
        a: embeddings of the first views, ``(B, D)``.
        b: embeddings of the second views, ``(B, D)``.
        temperature: softmax temperature (0.5 in the IDAA paper's CIFAR runs).

    Returns:
        The mean loss over the ``2B`` anchors, a scalar.

    Example:
        >>> a = torch.eye(4)
        >>> bool(nt_xent(a, a) < nt_xent(a, a.roll(1, dims=0)))
        True
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"nt_xent: expected two (B, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}.")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(logits.float(), targets)


def negative_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Mean negative cosine similarity of paired rows, the BYOL/SimSiam criterion (without its stop-gradient).

    Example:
        >>> round(float(negative_cosine(torch.ones(2, 3), torch.ones(2, 3))), 6)
        -1.0
    """
    if a.shape != b.shape:
        raise ValueError(f"negative_cosine: expected tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return -F.cosine_similarity(a, b, dim=-1).mean()
