"""The VAE of IDAA: its reconstruction ``G(x) = decode(encode(x))`` is what the attack moves through the latent.

The residual ``R(x) = x - G(x)``, which the VAE cannot reconstruct, keeps most of the identity-distinctive detail;
IDAA changes ``G(x)`` and adds ``R(x)`` back (the name ``IdentityVAE`` is the paper's "identity-disentangled" VAE).

The architecture follows the convolutional VAE of Yang et al. (ICML 2022): ``num_downsamplings`` stride-2 4x4
convolutions to a ``width``-channel feature map, residual blocks with BatchNorm, linear heads to the latent, and a
mirrored decoder with a ``tanh`` output. The CIFAR model of the paper is the default configuration; the ImageNet model
is the same code with five downsamplings and ``bottleneck_norm=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms._hub import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    HubOptions,
    check_state_dict,
    find_checkpoint,
    load_weights,
    push_to_hub,
    read_config,
    save_weights,
    shipped_checkpoint_dir,
    write_config,
    write_model_card,
)

__all__ = ["DEFAULT_CHECKPOINT", "VAEConfig", "VAEEncoding", "VAEOutput", "IdentityVAE", "vae_loss"]

OUTPUT_NORMS = ("tanh", "tanh_batchnorm")
#: The checkpoint shipped with the package, loaded by ``from_pretrained()`` without a name.
DEFAULT_CHECKPOINT = "idaa-vae-cifar10"


def _channel_values(name: str, values: Any, channels: int) -> tuple[float, ...]:
    """``values`` as a tuple of ``channels`` finite floats, or a one-line error naming ``VAEConfig.<name>``."""
    expected = f"VAEConfig.{name}: expected {channels} finite numbers (one per channel)"
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ValueError(f"{expected}, got {values!r}.")
    numbers = []
    for value in values:
        if isinstance(value, (bool, str, bytes)) or value is None:
            raise ValueError(f"{expected}, got {values!r}.")
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{expected}, got {values!r}.") from None
    if len(numbers) != channels:
        raise ValueError(f"VAEConfig.{name}: expected {channels} values (one per channel), got {len(numbers)}.")
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{expected}, got {tuple(numbers)}.")
    return tuple(numbers)


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
        for name in ("in_channels", "image_size", "width", "latent_dim", "num_downsamplings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name}: expected a positive int, got {value!r}.")
        blocks = self.num_res_blocks
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0:
            raise ValueError(f"VAEConfig.num_res_blocks: expected an int >= 0, got {self.num_res_blocks!r}.")
        if not isinstance(self.bottleneck_norm, bool):
            raise ValueError(f"VAEConfig.bottleneck_norm: expected true or false, got {self.bottleneck_norm!r}.")
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
        if not isinstance(self.output_norm, str) or self.output_norm not in OUTPUT_NORMS:
            raise ValueError(f"VAEConfig.output_norm: expected one of {OUTPUT_NORMS}, got {self.output_norm!r}.")
        self.input_mean = _channel_values("input_mean", self.input_mean, self.in_channels)
        self.input_std = _channel_values("input_std", self.input_std, self.in_channels)
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


class IdentityVAE(nn.Module):
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

    def _features(self, x: Tensor) -> Tensor:
        """The flattened bottleneck features that both posterior heads read."""
        return self.encoder_trunk(self.encoder_stages(x)).flatten(1)

    def encode(self, x: Tensor) -> VAEEncoding:
        """Posterior parameters of a batch in VAE space."""
        h = self._features(x)
        return VAEEncoding(self.fc_mu(h), self.fc_logvar(h))

    def posterior_mean(self, x: Tensor) -> Tensor:
        """``encode(x).mu`` without computing the log-variance head (which neither ``G(x)`` nor an attack needs).

        A subclass (or an instance) that overrides :meth:`encode` is called through it, so the two always agree.

        Shape:
            - Input: ``(B, in_channels, image_size, image_size)``, in VAE space.
            - Output: ``(B, latent_dim)``.

        Example:
            >>> vae = IdentityVAE(VAEConfig(width=16, latent_dim=8)).eval()
            >>> x = torch.rand(2, 3, 32, 32)
            >>> torch.equal(vae.posterior_mean(x), vae.encode(x).mu)
            True
        """
        if type(self).encode is not IdentityVAE.encode or "encode" in vars(self):
            return self.encode(x).mu
        return self.fc_mu(self._features(x))

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

    # -- checkpoints: config.json + model.safetensors + README.md, locally or on the Hub --------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, **hub_options: Any) -> IdentityVAE:
        """Load a VAE, in eval mode, from a local checkpoint folder, a Hub repo id, or (``None``) the shipped default.

        Weights are read with safetensors only; nothing is unpickled.

        Args:
            name_or_path: a folder written by :meth:`save_pretrained`, a Hub repo id (``"org/name"``), or ``None``
                for the checkpoint shipped with the package (no network).
            **hub_options: ``revision``, ``cache_dir``, ``force_download``, ``local_files_only``, ``token`` (as in
                ``huggingface_hub.hf_hub_download``) and ``map_location``: see :class:`idaa_transforms.HubOptions`.

        Raises:
            CheckpointError: the checkpoint, a file in it, or its contents are missing or inconsistent.
            TypeError, ValueError: a Hub option is unknown or invalid.

        Example:
            >>> vae = IdentityVAE.from_pretrained()  # the shipped default, no network
            >>> vae.config.image_size, vae.training
            (32, False)
        """
        options = HubOptions.from_kwargs(hub_options, "IdentityVAE.from_pretrained")
        if name_or_path is None:
            name_or_path = shipped_checkpoint_dir(DEFAULT_CHECKPOINT)
        source = os.fspath(name_or_path)
        files = find_checkpoint(name_or_path, options)
        values = read_config(files[CONFIG_FILE], source)
        try:
            config = VAEConfig.from_dict(values, source=f"{source}/{CONFIG_FILE}")
        except (TypeError, ValueError) as err:
            message = str(err)
            raise CheckpointError(message if message.startswith(source) else f"{source}/{CONFIG_FILE}: {message}") \
                from None
        state = load_weights(files[WEIGHTS_FILE], source)
        model = cls(config)
        check_state_dict(model, state, f"{source}/{WEIGHTS_FILE}")
        model.load_state_dict(state)
        return model.to(options.map_location).eval()

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``save_directory`` (created), each atomically.

        A ``README.md`` model card is added when the folder has none (a card written before, e.g. by the VAE
        trainer, is kept). :meth:`from_pretrained` loads the folder back.

        Returns:
            The folder.

        Example:
            >>> import tempfile
            >>> folder = IdentityVAE(VAEConfig(width=16, latent_dim=8)).save_pretrained(tempfile.mkdtemp())
            >>> sorted(p.name for p in folder.iterdir())
            ['README.md', 'config.json', 'model.safetensors']
            >>> IdentityVAE.from_pretrained(folder).config.latent_dim
            8
        """
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"save_pretrained: {str(folder)!r} is a file; give a folder for the checkpoint.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise FileExistsError(f"save_pretrained: a part of {str(folder)!r} is a file; give a folder for the "
                                  f"checkpoint.") from None
        save_weights(folder, self.state_dict())
        write_config(folder, self.config.to_dict())
        if not (folder / CARD_FILE).exists():
            cfg = self.config
            write_model_card(
                folder,
                title=f"IdentityVAE ({cfg.image_size} px, latent {cfg.latent_dim}, width {cfg.width})",
                summary="The generative model of an `idaa_transforms.IDAATransform` (identity-disentangled "
                        "adversarial augmentation): `G(x) = decode(encode(x))` is the VAE's reconstruction, "
                        "and the residual `R(x) = x - G(x)` keeps most of the identity-distinctive detail.",
                sections={"Usage": "```python\nfrom idaa_transforms import IDAATransform\n"
                                   "idaa = IDAATransform.from_pretrained(\"<this repo or folder>\", encoder=model, "
                                   "eps=0.1)\n```"},
                tags=["idaa", "vae"],
            )
        return folder

    def push_to_hub(self, repo_id: str, **upload_options: Any) -> str:
        """Upload the checkpoint (as :meth:`save_pretrained` writes it) to Hub repo ``repo_id``, created if needed.

        Args:
            repo_id: ``"org/name"``.
            **upload_options: ``commit_message``, ``private``, ``token``, ``branch``, ``create_pr``.

        Returns:
            The URL of the commit.
        """
        return push_to_hub(self.save_pretrained, repo_id, **upload_options)


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
