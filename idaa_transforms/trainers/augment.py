"""The paper's CIFAR views, made on the device with kornia inside the training step.

Example:
    >>> import torch
    >>> views = simclr_views(32)
    >>> views(torch.rand(4, 3, 32, 32)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from torch import nn

__all__ = ["simclr_views"]


def simclr_views(image_size: int = 32, min_scale: float = 0.2) -> nn.Module:
    """Random resized crop, horizontal flip, colour jitter (p=0.8) and greyscale (p=0.2) of a ``[0, 1]`` batch.

    Each call draws new parameters per sample from torch's global random generator (seed it for reproducibility).

    Args:
        image_size: output side in pixels.
        min_scale: smallest crop area as a fraction of the image (0.2 for CIFAR in the IDAA paper).
    """
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale: expected a fraction in (0, 1], got {min_scale!r}.")
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(min_scale, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    )
