"""``IDAATransform``: identity-disentangled adversarial augmentation as a batch transform.

For a batch ``x`` the transform

1. splits it with the VAE into the identity part ``G(x) = decode(encode(x))`` and the residual ``R(x) = x - G(x)``;
2. takes ``steps`` signed-gradient steps on the latent ``z`` that *increase* a loss ``L(x, x_adv)``, where
   ``x_adv(z) = decode(z) + R(x)``, staying in an ``eps``-ball around the posterior mean;
3. returns ``decode(z_adv) + R(x)``, detached.

Only ``z`` moves, so the sample changes along the VAE's manifold and keeps its fine detail ``R(x)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms._hub import HubOptions
from idaa_transforms.attack import LossFn, encoder_loss, loss_gradient
from idaa_transforms.vae import IdentityVAE

__all__ = ["IDAATransform", "Decomposition", "LossFn"]

NORMS = ("linf", "l2")


class Decomposition(NamedTuple):
    """``x == identity + residual``; ``latent`` is the posterior mean that ``identity`` was decoded from."""

    identity: Tensor
    residual: Tensor
    latent: Tensor


def _check_range(name: str, value: float, low: float, high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"[{low}, {high}]" if high != float("inf") else f">= {low}"
        raise ValueError(f"{name} out of bounds. Expected a number in {bounds}, got {value!r}.")
    return float(value)


def _per_channel(name: str, values: float | Sequence[float] | None, channels: int) -> Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name}: expected 1 or {channels} values (one per channel), got {t.numel()}.")
    return t.clone().view(1, channels, 1, 1)


def _posterior_mean(vae: IdentityVAE, v: Tensor) -> Tensor:
    """``vae.encode(v).mu`` without the log-variance head, which the transform never uses.

    A VAE whose ``encode`` is overridden (a subclass, or an instance attribute such as a compiled ``encode``) is
    called through it unchanged.
    """
    if type(vae).encode is not IdentityVAE.encode or "encode" in vars(vae):
        return vae.encode(v).mu
    return vae.fc_mu(vae.encoder_trunk(vae.encoder_stages(v)).flatten(1))


class IDAATransform(nn.Module):
    r"""Identity-disentangled adversarial augmentation (Yang et al., ICML 2022) for batches on any device.

    Args:
        vae: the :class:`IdentityVAE` that defines ``G``; it becomes a submodule and always runs in eval mode.
        encoder: the model under training, used for the built-in loss ``nt_xent(encoder(x), encoder(x_adv))``.
            It is referenced, not owned (not a submodule): its ``.grad``, train/eval flags and BatchNorm running
            statistics are left untouched.
        loss_fn: ``loss_fn(x, x_adv) -> scalar`` to increase instead of the built-in loss.
        eps: radius of the latent perturbation (L-inf or L2 ball around the posterior mean).
        steps: gradient-ascent steps; 1 is the paper's FGSM step.
        step_size: size of each step; default ``eps`` for one step, ``2.5 * eps / steps`` otherwise.
        norm: ``"linf"`` (signed gradient, the paper's) or ``"l2"`` (normalised gradient).
        random_start: start from a random point in the ball instead of its centre: uniform in the L-inf ball; for
            ``"l2"``, a uniform direction at a radius uniform in ``[0, eps]``.
        p: probability that a sample is augmented; the others are returned unchanged and cost nothing.
        mean, std: the normalisation the caller applied before the transform (per channel, pixel units);
            ``None`` means inputs are plain [0, 1] pixels.
        clamp: clip the output to the valid pixel range ([0, 1] pixels, mapped through ``mean``/``std``).
        temperature: NT-Xent temperature of the built-in loss.
        use_adversarial_bn: run the attack's encoder passes inside :func:`~idaa_transforms.adversarial_bn`, for
            encoders converted with :func:`~idaa_transforms.convert_to_dual_bn`; without ``anchor=`` this includes
            the built-in loss's pass on ``x`` (as in the original ResNet-18 code).
        check_finite: reject NaN/Inf inputs. ``None`` checks CPU tensors only, since on an accelerator the check
            forces a host-device synchronisation.
        generator: a ``torch.Generator`` on the CPU, or an int seed, for the sample selection and random start.

    Shape:
        - Input: ``(B, C, H, W)`` or ``(C, H, W)``, any ``H, W`` (the VAE runs at its own resolution).
        - Output: like the input: same shape, dtype and device, detached.

    Raises:
        ValueError: for arguments out of range or inputs of the wrong rank, channels, device or values.
        TypeError: for non-tensor or non-floating-point inputs.

    Notes:
        An empty batch is returned unchanged. With one sample the built-in NT-Xent has no negatives, so the
        built-in loss becomes its alignment term, the negative cosine similarity. The encoder is called directly,
        so pass ``ddp_model.module`` rather than a ``DistributedDataParallel`` wrapper.

    Example:
        >>> from idaa_transforms import IdentityVAE, VAEConfig
        >>> vae = IdentityVAE(VAEConfig(width=16, latent_dim=8))
        >>> encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        >>> idaa = IDAATransform(vae, encoder=encoder, eps=0.1, generator=0)
        >>> x = torch.rand(4, 3, 32, 32)
        >>> idaa(x).shape
        torch.Size([4, 3, 32, 32])
        >>> parts = idaa.decompose(x)
        >>> bool(torch.allclose(parts.identity + parts.residual, x, atol=1e-6))
        True
    """

    def __init__(
        self,
        vae: IdentityVAE,
        encoder: Callable[[Tensor], Tensor] | None = None,
        loss_fn: LossFn | None = None,
        *,
        eps: float = 0.1,
        steps: int = 1,
        step_size: float | None = None,
        norm: str = "linf",
        random_start: bool = False,
        p: float = 1.0,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        clamp: bool = False,
        temperature: float = 0.5,
        use_adversarial_bn: bool = False,
        check_finite: bool | None = None,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(vae, IdentityVAE):
            raise TypeError(f"vae: expected an IdentityVAE, got {type(vae).__name__}.")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder: expected a callable (an nn.Module), got {type(encoder).__name__}.")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(x, x_adv) -> scalar, got {type(loss_fn).__name__}.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps out of bounds. Expected an int >= 1, got {steps!r}.")
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}.")
        if (mean is None) != (std is None):
            raise ValueError("mean, std: give both (the normalisation applied before the transform) or neither.")
        self.eps = _check_range("eps", eps, 0.0)
        self.steps = steps
        default_step = self.eps if steps == 1 else 2.5 * self.eps / steps
        self.step_size = default_step if step_size is None else _check_range("step_size", step_size, 0.0)
        self.norm = norm
        self.random_start = bool(random_start)
        self.p = _check_range("p", p, 0.0, 1.0)
        self.clamp = bool(clamp)
        self.temperature = _check_range("temperature", temperature, 1e-8)
        self.use_adversarial_bn = bool(use_adversarial_bn)
        self.check_finite = check_finite
        self.loss_fn = loss_fn
        # Referenced, not registered: the encoder belongs to the caller.
        self.__dict__["encoder"] = encoder
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator().manual_seed(generator)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or an int seed, got {type(generator).__name__}.")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator: expected a CPU generator (draws are tiny), got one on {generator.device}.")
        self.generator = generator

        self.vae = vae.eval()
        cfg = vae.config
        channels = cfg.in_channels
        user_mean = _per_channel("mean", mean, channels)
        user_std = _per_channel("std", std, channels)
        if user_std is not None and bool((user_std <= 0).any()):
            raise ValueError(f"std: expected positive values, got {user_std.flatten().tolist()}.")
        user_mean = torch.zeros(1, channels, 1, 1) if user_mean is None else user_mean
        user_std = torch.ones(1, channels, 1, 1) if user_std is None else user_std
        vae_mean = _per_channel("vae.config.input_mean", cfg.input_mean, channels)
        vae_std = _per_channel("vae.config.input_std", cfg.input_std, channels)
        # VAE space = user space * scale + shift; pixels = user space * user_std + user_mean.
        device = next(vae.parameters()).device
        self.register_buffer("_scale", (user_std / vae_std).to(device), persistent=False)
        self.register_buffer("_shift", ((user_mean - vae_mean) / vae_std).to(device), persistent=False)
        self.register_buffer("_low", (-user_mean / user_std).to(device), persistent=False)
        self.register_buffer("_high", ((1 - user_mean) / user_std).to(device), persistent=False)

    # -- public API ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        encoder: Callable[[Tensor], Tensor] | None = None,
        loss_fn: LossFn | None = None,
        **options: Any,
    ) -> IDAATransform:
        """Build the transform on a pretrained VAE: a Hub repo id, a local folder, or ``None`` for the shipped default.

        Args:
            name_or_path, encoder, loss_fn: the checkpoint (see :meth:`IdentityVAE.from_pretrained`), then as in the
                constructor.
            **options: the Hub options (``revision``, ``cache_dir``, ``force_download``, ``local_files_only``,
                ``token``, ``map_location``: see :class:`~idaa_transforms.HubOptions`), passed to
                :meth:`IdentityVAE.from_pretrained`, and the constructor's keyword arguments (``eps``, ``steps``,
                ``p``, ...).

        Example:
            >>> idaa = IDAATransform.from_pretrained(loss_fn=lambda x, x_adv: (x_adv - x).pow(2).sum(), eps=0.05)
            >>> idaa(torch.rand(2, 3, 32, 32)).shape
            torch.Size([2, 3, 32, 32])
        """
        hub_options, options = HubOptions.split(options)
        vae = IdentityVAE.from_pretrained(name_or_path, **hub_options)
        return cls(vae, encoder, loss_fn, **options)

    def train(self, mode: bool = True) -> IDAATransform:
        """Set the mode of the transform; the VAE stays in eval mode (its statistics are part of the checkpoint)."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def decompose(self, x: Tensor) -> Decomposition:
        """Split ``x`` into the identity ``G(x)`` and the residual ``R(x) = x - G(x)``, in the caller's space.

        Example:
            >>> from idaa_transforms import IdentityVAE, VAEConfig
            >>> idaa = IDAATransform(IdentityVAE(VAEConfig(width=16, latent_dim=8)))
            >>> idaa.decompose(torch.rand(2, 3, 48, 48)).identity.shape
            torch.Size([2, 3, 48, 48])
        """
        x, unbatched = self._check_input(x)
        mu = self._encode(x)
        identity = self._decode(mu, x)
        parts = Decomposition(identity, x - identity, mu)
        return Decomposition(*(t.squeeze(0) for t in parts)) if unbatched else parts

    def forward(self, x: Tensor, loss_fn: LossFn | None = None, anchor: Tensor | None = None) -> Tensor:
        """Return the adversarial views of ``x``.

        Args:
            x: the batch, ``(B, C, H, W)`` or ``(C, H, W)``.
            loss_fn: ``loss_fn(x, x_adv) -> scalar`` for this call, overriding the one given at construction.
            anchor: ``encoder(x)`` if the caller has it already (e.g. from its own forward pass); it is detached and
                saves the built-in loss one encoder pass.
        """
        x, unbatched = self._check_input(x)
        loss = self._resolve_loss(loss_fn)
        if anchor is not None and (not isinstance(anchor, Tensor) or anchor.ndim < 1 or anchor.shape[0] != x.shape[0]):
            shape = tuple(anchor.shape) if isinstance(anchor, Tensor) else type(anchor).__name__
            raise ValueError(f"anchor: expected encoder(x), a tensor with {x.shape[0]} rows, got {shape}.")
        if anchor is not None and anchor.device != x.device:
            raise ValueError(f"anchor: expected a tensor on {x.device} like the input, got one on {anchor.device}.")
        if x.shape[0] == 0:
            return x.detach()

        chosen = self._choose_samples(x.shape[0])
        if chosen is None:
            adv = self._attack(x, loss, anchor)
        elif chosen.numel() == 0:
            adv = x.detach()
        else:
            index = chosen.to(x.device, non_blocking=True)
            part = x.index_select(0, index)
            part_anchor = None if anchor is None else anchor.index_select(0, index)
            adv = x.detach().index_copy(0, index, self._attack(part, loss, part_anchor))
        return adv.squeeze(0) if unbatched else adv

    # -- the algorithm ---------------------------------------------------------------------------------------------
    def _attack(self, x: Tensor, loss: Callable[[Tensor, Tensor, Tensor | None], Tensor], anchor: Tensor | None) -> Tensor:
        with torch.no_grad():
            mu = self._encode(x)
        start = mu + self._random_offset(mu) if self.random_start else mu
        with torch.enable_grad():
            z = start.detach().requires_grad_(True)
            g = self._decode(z, x)
            if self.random_start:
                with torch.no_grad():
                    residual = x - self._decode(mu, x).to(x.dtype)
            else:
                residual = x - g.detach().to(x.dtype)
            for step in range(self.steps):
                if step > 0:
                    g = self._decode(z, x)
                value = loss(x, g.to(x.dtype) + residual, anchor)
                grad = loss_gradient(value, z)
                with torch.no_grad():
                    z = self._ascend(z, grad, mu)
                z = z.detach().requires_grad_(step < self.steps - 1)
        with torch.no_grad():
            out = self._decode(z, x).to(x.dtype) + residual
            if self.clamp:
                out = torch.maximum(torch.minimum(out, self._high.to(out.dtype)), self._low.to(out.dtype))
        return out

    def _ascend(self, z: Tensor, grad: Tensor, center: Tensor) -> Tensor:
        if self.norm == "linf":
            z = z + self.step_size * grad.sign()
            return center + (z - center).clamp(-self.eps, self.eps)
        z = z + self.step_size * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        delta = z - center
        return center + delta * (self.eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)

    def _random_offset(self, mu: Tensor) -> Tensor:
        noise = torch.rand(mu.shape, generator=self.generator) * 2 - 1
        if self.norm == "l2":  # uniform direction, radius uniform in [0, eps]
            direction = torch.randn(mu.shape, generator=self.generator)
            direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
            noise = direction * torch.rand(mu.shape[0], 1, generator=self.generator)
        return (noise * self.eps).to(device=mu.device, dtype=mu.dtype, non_blocking=True)

    def _choose_samples(self, batch: int) -> Tensor | None:
        """Indices of the samples to augment (drawn on the CPU: no device synchronisation), or ``None`` for all."""
        if self.p >= 1.0:
            return None
        return (torch.rand(batch, generator=self.generator) < self.p).nonzero().flatten()

    def _encode(self, x: Tensor) -> Tensor:
        v = x * self._scale + self._shift
        size = self.vae.config.image_size
        if v.shape[-2:] != (size, size):
            v = F.interpolate(v, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return _posterior_mean(self.vae, v)

    def _decode(self, z: Tensor, like: Tensor) -> Tensor:
        """``G`` at latent ``z``, resized to ``like``'s resolution and mapped to the caller's space."""
        g = self.vae.decode(z)
        if g.shape[-2:] != like.shape[-2:]:
            g = F.interpolate(g, size=like.shape[-2:], mode="bilinear", align_corners=False)
        return (g - self._shift) / self._scale

    def _resolve_loss(self, loss_fn: LossFn | None) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        user_loss = loss_fn if loss_fn is not None else self.loss_fn
        if user_loss is not None:
            if not callable(user_loss):
                raise TypeError(f"loss_fn: expected a callable loss_fn(x, x_adv) -> scalar, got {type(user_loss).__name__}.")
            return lambda x, x_adv, anchor: user_loss(x, x_adv)
        if self.encoder is None:
            raise ValueError(
                "IDAATransform has no loss to increase: pass encoder=<model> (built-in NT-Xent) or "
                "loss_fn=<callable(x, x_adv) -> scalar>, at construction or per call."
            )
        return self._encoder_loss

    def _encoder_loss(self, x: Tensor, x_adv: Tensor, anchor: Tensor | None) -> Tensor:
        return encoder_loss(self.encoder, x, x_adv, anchor, self.temperature, self.use_adversarial_bn)

    # -- validation --------------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> tuple[Tensor, bool]:
        if not isinstance(x, Tensor):
            raise TypeError(f"IDAATransform: expected a torch.Tensor, got {type(x).__name__}.")
        if x.ndim not in (3, 4):
            raise ValueError(f"IDAATransform: expected (B, C, H, W) or (C, H, W). Got shape {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise TypeError(
                f"IDAATransform: expected a floating-point image tensor, got {x.dtype}. "
                "Convert first, e.g. x.float() / 255 for uint8 images."
            )
        unbatched = x.ndim == 3
        x = x.unsqueeze(0) if unbatched else x
        channels = self.vae.config.in_channels
        if x.shape[1] != channels:
            raise ValueError(
                f"IDAATransform: the VAE expects {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})."
            )
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"IDAATransform: expected non-empty images, got shape {tuple(x.shape)}.")
        vae_device = next(self.vae.parameters()).device
        if x.device != vae_device:
            raise ValueError(
                f"IDAATransform: input is on {x.device} but the VAE is on {vae_device}; "
                f"move one of them, e.g. idaa.to({str(x.device)!r})."
            )
        if self._scale.device != vae_device:
            raise ValueError(
                f"IDAATransform: the VAE was moved to {vae_device} on its own; move the whole transform instead, "
                f"e.g. idaa.to({str(vae_device)!r})."
            )
        encoder = self.encoder
        if isinstance(encoder, nn.Module):
            param = next(encoder.parameters(), None)
            if param is not None and param.device != x.device:
                raise ValueError(f"IDAATransform: input is on {x.device} but the encoder is on {param.device}.")
        check = x.device.type == "cpu" if self.check_finite is None else self.check_finite
        if check and x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError("IDAATransform: the input contains NaN or Inf values.")
        return x, unbatched

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, steps={self.steps}, step_size={self.step_size}, norm={self.norm!r}, "
            f"random_start={self.random_start}, p={self.p}, clamp={self.clamp}"
        )
