"""The identity VAE: the generative model whose reconstruction ``G(x)`` is the "identity" part of an image.

The architecture follows the convolutional VAE of Yang et al. (ICML 2022): ``num_downsamplings`` stride-2 4x4
convolutions to a ``width``-channel feature map, residual blocks with BatchNorm, linear heads to the latent, and a
mirrored decoder with a ``tanh`` output. The CIFAR model of the paper is the default configuration; the ImageNet model
is the same code with five downsamplings and ``bottleneck_norm=True``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

__all__ = ["VAEConfig", "VAEEncoding", "VAEOutput", "IdentityVAE", "vae_loss"]

OUTPUT_NORMS = ("tanh", "tanh_batchnorm")


@dataclass
class VAEConfig:
    """Hyper-parameters of an :class:`IdentityVAE`; saved as ``config.json`` next to the weights.

    Args:
        in_channels: image channels.
        image_size: the VAE's native (square) resolution; must be divisible by ``2 ** num_downsamplings``.
        width: channels of the bottleneck feature map; stage ``k`` of ``n`` has ``width // 2 ** (n - 1 - k)``.
        latent_dim: size of the latent vector ``z``.
        num_downsamplings: stride-2 convolutions in the encoder (2 for 32 px CIFAR, 5 for 224 px ImageNet).
        num_res_blocks: residual blocks in the encoder and in the decoder.
        bottleneck_norm: add a BatchNorm after the encoder's last and before the decoder's first residual block
            (the layout of the original ImageNet model).
        output_norm: ``"tanh"`` (outputs in [-1, 1]) or ``"tanh_batchnorm"`` (``tanh`` followed by an affine
            BatchNorm, as in the original checkpoints, whose outputs live in dataset-normalised space).
        input_mean: per-channel mean of the VAE's input normalisation, in pixel units ([0, 1] images).
        input_std: per-channel std of the VAE's input normalisation. The VAE sees ``(pixels - mean) / std``.

    Example:
        >>> cfg = VAEConfig(image_size=64, num_downsamplings=3, latent_dim=128)
        >>> cfg.feature_size
        8
    """

    in_channels: int = 3
    image_size: int = 32
    width: int = 128
    latent_dim: int = 512
    num_downsamplings: int = 2
    num_res_blocks: int = 2
    bottleneck_norm: bool = False
    output_norm: str = "tanh"
    input_mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    input_std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self) -> None:
        self.input_mean = tuple(float(m) for m in self.input_mean)
        self.input_std = tuple(float(s) for s in self.input_std)
        for name in ("in_channels", "image_size", "width", "latent_dim", "num_downsamplings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name}: expected a positive int, got {value!r}.")
        blocks = self.num_res_blocks
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0:
            raise ValueError(f"VAEConfig.num_res_blocks: expected an int >= 0, got {self.num_res_blocks!r}.")
        factor = 2**self.num_downsamplings
        if self.image_size % factor:
            raise ValueError(
                f"VAEConfig.image_size: expected a multiple of 2 ** num_downsamplings = {factor}, "
                f"got {self.image_size}."
            )
        if self.width % 2 ** (self.num_downsamplings - 1):
            raise ValueError(
                f"VAEConfig.width: expected a multiple of 2 ** (num_downsamplings - 1) = "
                f"{2 ** (self.num_downsamplings - 1)}, got {self.width}."
            )
        if self.output_norm not in OUTPUT_NORMS:
            raise ValueError(f"VAEConfig.output_norm: expected one of {OUTPUT_NORMS}, got {self.output_norm!r}.")
        for name in ("input_mean", "input_std"):
            if len(getattr(self, name)) != self.in_channels:
                raise ValueError(
                    f"VAEConfig.{name}: expected {self.in_channels} values (one per channel), "
                    f"got {len(getattr(self, name))}."
                )
        if any(s <= 0 for s in self.input_std):
            raise ValueError(f"VAEConfig.input_std: expected positive values, got {self.input_std}.")

    @property
    def feature_size(self) -> int:
        """Side of the bottleneck feature map."""
        return self.image_size // 2**self.num_downsamplings

    def stage_channels(self) -> list[int]:
        """Channels after each downsampling stage, from the first to the bottleneck."""
        n = self.num_downsamplings
        return [self.width // 2 ** (n - 1 - k) for k in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> VAEConfig:
        """Build a config from a dict (e.g. ``config.json``), rejecting keys it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown VAE config key(s) {unknown}; expected a subset of {sorted(known)}. "
                "Remove them, or upgrade idaa_transforms if the checkpoint was written by a newer version."
            )
        return cls(**values)


class VAEEncoding(NamedTuple):
    """The approximate posterior ``q(z | x) = N(mu, exp(logvar))``."""

    mu: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + noise * torch.exp(0.5 * self.logvar)


class VAEOutput(NamedTuple):
    """What :meth:`IdentityVAE.forward` returns."""

    reconstruction: Tensor
    z: Tensor
    mu: Tensor
    logvar: Tensor


class ResidualBlock(nn.Module):
    """``x + conv1x1(lrelu(bn(conv3x3(lrelu(x)))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.leaky_relu(x))
        h = self.conv2(F.leaky_relu(self.norm(h)))
        return x + h


class _ConvNormAct(nn.Sequential):
    def __init__(self, conv: nn.Module, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.BatchNorm2d(channels)
        self.act = act


def _residual_trunk(cfg: VAEConfig, norm_first: bool, norm_last: bool) -> nn.Sequential:
    """Residual blocks separated by BatchNorms: ``[bn] rb bn rb ... rb [bn]``."""
    layers: list[nn.Module] = [nn.BatchNorm2d(cfg.width)] if norm_first else []
    for i in range(cfg.num_res_blocks):
        layers.append(ResidualBlock(cfg.width))
        if i < cfg.num_res_blocks - 1 or norm_last:
            layers.append(nn.BatchNorm2d(cfg.width))
    return nn.Sequential(*layers)


class IdentityVAE(nn.Module, PyTorchModelHubMixin, library_name="idaa_transforms", tags=["idaa", "vae"]):
    """Convolutional VAE that separates an image into what it can reconstruct, ``G(x)``, and the rest.

    Inputs and outputs live in the VAE's own normalised space, ``(pixels - input_mean) / input_std``;
    :class:`~idaa_transforms.IDAATransform` maps a user's images there and back.

    Args:
        config: the architecture; ``None`` gives the paper's CIFAR model.

    Shape:
        - Input: ``(B, in_channels, image_size, image_size)``.
        - Latent: ``(B, latent_dim)``.

    Example:
        >>> vae = IdentityVAE(VAEConfig(width=32, latent_dim=16)).eval()
        >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> vae.decode(vae.encode(x).mu).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else VAEConfig()
        self.config = cfg
        chans = cfg.stage_channels()
        stages, c_in = [], cfg.in_channels
        for c_out in chans:
            conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False)
            stages.append(_ConvNormAct(conv, c_out, nn.ReLU(inplace=True)))
            c_in = c_out
        self.encoder_stages = nn.Sequential(*stages)
        self.encoder_trunk = _residual_trunk(cfg, norm_first=False, norm_last=cfg.bottleneck_norm)
        flat = cfg.width * cfg.feature_size**2
        self.fc_mu = nn.Linear(flat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(flat, cfg.latent_dim)
        self.fc_decode = nn.Linear(cfg.latent_dim, flat)
        self.decoder_trunk = _residual_trunk(cfg, norm_first=cfg.bottleneck_norm, norm_last=True)
        ups, outs = [], chans[::-1][1:] + [cfg.in_channels]
        for k, (c_in, c_out) in enumerate(zip(chans[::-1], outs)):
            conv = nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False)
            last = k == len(chans) - 1
            ups.append(conv if last else _ConvNormAct(conv, c_out, nn.LeakyReLU(inplace=True)))
        self.decoder_stages = nn.Sequential(*ups)
        self.output_norm = nn.BatchNorm2d(cfg.in_channels) if cfg.output_norm == "tanh_batchnorm" else None

    def encode(self, x: Tensor) -> VAEEncoding:
        """Posterior parameters of a batch in VAE space."""
        h = self.encoder_trunk(self.encoder_stages(x)).flatten(1)
        return VAEEncoding(self.fc_mu(h), self.fc_logvar(h))

    def decode(self, z: Tensor) -> Tensor:
        """Images in VAE space from latents ``(B, latent_dim)``."""
        cfg = self.config
        h = self.fc_decode(z).view(-1, cfg.width, cfg.feature_size, cfg.feature_size)
        out = torch.tanh(self.decoder_stages(self.decoder_trunk(h)))
        return self.output_norm(out) if self.output_norm is not None else out

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Reconstruct ``x``: samples ``z`` in training mode, uses the posterior mean in eval mode."""
        enc = self.encode(x)
        z = enc.sample(generator) if self.training else enc.mu
        return VAEOutput(self.decode(z), z, enc.mu, enc.logvar)

    # -- Hub (de)serialisation: config.json + model.safetensors + README.md ---------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        from idaa_transforms.hub import write_checkpoint

        write_checkpoint(self, save_directory)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
    ) -> IdentityVAE:
        """Load a VAE from a Hub repo id, a local checkpoint folder, or (``None``) the default shipped with the package.

        Weights are read with safetensors only; nothing is unpickled. See :func:`idaa_transforms.hub.load_vae`.

        Example:
            >>> vae = IdentityVAE.from_pretrained()  # the shipped default, no network
            >>> vae.config.image_size
            32
        """
        from idaa_transforms.hub import load_vae

        return load_vae(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                        force_download=force_download, local_files_only=local_files_only, token=token,
                        map_location=map_location)


def vae_loss(x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, kl_weight: float = 0.1) -> Tensor:
    """The VAE objective of the original training: pixel MSE plus ``kl_weight`` times the KL term.

    The KL divergence to ``N(0, I)`` is summed and divided by ``B * C * latent_dim``, the normalisation the
    original CIFAR training used, so ``kl_weight=0.1`` means what it meant there.

    Example:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> float(vae_loss(x, x, torch.zeros(2, 8), torch.zeros(2, 8)))
        0.0
    """
    mse = F.mse_loss(recon, x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    kl = kl / (x.shape[0] * x.shape[1] * mu.shape[1])
    return mse + kl_weight * kl
