"""idaa_transforms: identity-disentangled adversarial augmentation (IDAA) as a PyTorch batch transform.

Example:
    >>> import torch
    >>> from idaa_transforms import IDAATransform
    >>> encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())
    >>> idaa = IDAATransform.from_pretrained(encoder=encoder, eps=0.1)  # the shipped default VAE
    >>> idaa(torch.rand(8, 3, 32, 32)).shape
    torch.Size([8, 3, 32, 32])
"""

from idaa_transforms._hub import CheckpointError, HubOptions
from idaa_transforms.attack import Adversary, LossFn, frozen_batchnorm_stats
from idaa_transforms.bn import DualBatchNorm, adversarial_bn, convert_to_dual_bn
from idaa_transforms.losses import negative_cosine, nt_xent
from idaa_transforms.pixel_fgsm import PixelFGSM
from idaa_transforms.transform import Decomposition, IDAATransform
from idaa_transforms.vae import IdentityVAE, VAEConfig, VAEEncoding, VAEOutput, vae_loss

__version__ = "0.1.0"

__all__ = [
    "IDAATransform",
    "Decomposition",
    "PixelFGSM",
    "Adversary",
    "LossFn",
    "frozen_batchnorm_stats",
    "IdentityVAE",
    "VAEConfig",
    "VAEEncoding",
    "VAEOutput",
    "vae_loss",
    "HubOptions",
    "CheckpointError",
    "nt_xent",
    "negative_cosine",
    "DualBatchNorm",
    "convert_to_dual_bn",
    "adversarial_bn",
]
