"""``IDAATransform``: identity-disentangled adversarial augmentation as a batch transform.

For a batch ``x`` the transform

1. splits it with the VAE into its reconstruction ``G(x) = decode(encode(x))`` and the residual ``R(x) = x - G(x)``,
   which keeps most of the identity-distinctive information of each image (what the VAE cannot reconstruct);
2. takes ``steps`` signed-gradient steps on the latent ``z`` that *increase* a loss ``L(x, x_adv)``, where
   ``x_adv(z) = decode(z) + R(x)``, staying in an ``eps``-ball around the posterior mean;
3. returns ``decode(z_adv) + R(x)``, detached.

Only ``z`` moves: the reconstruction ``G(x)`` is perturbed along the VAE's manifold and the original residual ``R(x)``
is added back, so the view becomes harder while keeping the sample's identity.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms._hub import HubOptions
from idaa_transforms._precision import adversary_precision
from idaa_transforms.attack import (
    LossFn,
    batch_of_one_explained,
    check_anchor,
    check_encoder,
    check_images,
    encoder_loss,
    loss_gradient,
    reads_values,
    require_autograd,
    resolve_loss,
    trains_batchnorm,
    warn_once,
    warn_without_dual_bn,
    warn_without_modules,
)
from idaa_transforms.vae import IdentityVAE

__all__ = ["IDAATransform", "Decomposition", "LossFn"]

NORMS = ("linf", "l2")
#: Inputs whose pixels (through ``mean``/``std`` when given) reach this far below 0 or above 1 are refused: they are
#: not the images the transform was told about (normalised images without ``mean=``/``std=``, say), the VAE would
#: see them out of its range and the attack change them by next to nothing.
PIXEL_RANGE_SLACK = 0.5
#: Pixels above this value are taken for 0-255 pixels, and the refusal says so.
PIXEL_SCALE_LIMIT = 20.0
#: Inputs more than this many times the VAE's resolution draw a warning (once): the VAE sees them downsampled.
RESOLUTION_RATIO = 2


class Decomposition(NamedTuple):
    """``x == reconstruction + residual``, both in the caller's space and dtype.

    Attributes:
        reconstruction: ``G(x) = decode(encode(x))``, the VAE's reconstruction, at ``x``'s resolution.
        residual: ``R(x) = x - G(x)``, what the VAE cannot reconstruct; it keeps most identity-distinctive detail.
        latent: the posterior mean that ``reconstruction`` was decoded from, ``(B, latent_dim)``, in the VAE's
            dtype (also under autocast).
    """

    reconstruction: Tensor
    residual: Tensor
    latent: Tensor

    @property
    def identity(self) -> Tensor:
        """Deprecated name of :attr:`reconstruction` (``G(x)`` is not the identity part: ``R(x)`` carries it)."""
        warnings.warn(
            "Decomposition.identity is deprecated and will be removed; use .reconstruction (G(x)).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.reconstruction


def _check_range(name: str, value: float, low: float, high: float = math.inf) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
            or not math.isfinite(value)):
        bounds = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise ValueError(f"{name} out of bounds. Expected a finite number {bounds}, got {value!r}.")
    return float(value)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):  # bool("no") is True: a string or a number here is a mistake, not a flag
        raise TypeError(f"{name}: expected True or False, got {value!r}.")
    return value


def _per_channel(name: str, values: float | Sequence[float] | Tensor | None, channels: int) -> Tensor | None:
    if values is None:
        return None
    is_number = isinstance(values, (int, float)) and not isinstance(values, bool)
    is_list = isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not (is_number or is_list or (isinstance(values, Tensor) and values.is_floating_point())):
        raise TypeError(f"{name}: expected a number or one number per channel, got {values!r}.")
    t = torch.as_tensor(values, dtype=torch.float32).detach().cpu().flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name}: expected 1 or {channels} values (one per channel), got {t.numel()}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got {t.tolist()}.")
    return t.clone().view(1, channels, 1, 1)


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int) and not isinstance(generator, bool):
        if not -(2**63) <= generator < 2**64:
            raise ValueError(f"generator: expected an int seed in [-2**63, 2**64), got {generator!r}.")
        return torch.Generator().manual_seed(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or an int seed, got {type(generator).__name__}.")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator: expected a CPU generator (draws are tiny), got one on {generator.device}.")
    return generator


def _layout_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a batch laid out so (and not also contiguous, as a one-channel or 1x1 batch is), else
    the default layout: what the transform's outputs follow."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class IDAATransform(nn.Module):
    r"""Identity-disentangled adversarial augmentation (Yang et al., ICML 2022) for batches on any device.

    The VAE splits ``x`` into its reconstruction ``G(x)`` and the residual ``R(x) = x - G(x)``, which keeps most
    identity-distinctive information; the transform perturbs ``G(x)`` through the VAE's latent, in the direction that
    increases the loss, and adds the original ``R(x)`` back.

    Args:
        vae: the :class:`IdentityVAE` that defines ``G``. It is frozen (``requires_grad`` off, eval mode) and held
            outside the module tree: it never appears in ``parameters()``, ``buffers()`` or ``state_dict()`` of the
            transform or of a model holding it (so optimisers, DDP and checkpoints leave it alone), but follows
            ``.to()``, ``.cuda()``, ``.half()`` like a submodule. Save it with ``idaa.vae.save_pretrained(path)``.
        encoder: the model under training, used for the built-in loss ``nt_xent(encoder(x), encoder(x_adv))``:
            a module, a bound method of one (``self.forward_features``) or a function over one (a lambda). It is
            referenced, not owned (not a submodule): its ``.grad``, train/eval flags and BatchNorm running
            statistics are left untouched, also during calls of a ``loss_fn`` (see
            :func:`~idaa_transforms.frozen_batchnorm_stats` for models the transform does not know; a callable
            with no module behind it draws a warning).
        loss_fn: ``loss_fn(x, x_adv) -> scalar`` to increase instead of the built-in loss; it returns the loss and
            leaves ``.backward()`` to the transform.
        eps: radius of the latent perturbation (L-inf or L2 ball around the posterior mean).
        steps: gradient-ascent steps; 1 is the paper's FGSM step.
        step_size: size of each step; default ``eps`` for one step, ``2.5 * eps / steps`` otherwise.
        norm: ``"linf"`` (signed gradient, the paper's) or ``"l2"`` (normalised gradient).
        random_start: start from a random point in the ball instead of its centre: uniform in the L-inf ball; for
            ``"l2"``, a uniform direction at a radius uniform in ``[0, eps]``.
        p: probability that a sample is augmented; the others are returned unchanged and cost nothing.
        mean, std: the normalisation the caller applied before the transform, per channel, in units of [0, 1]
            pixels (``v2.Normalize``'s values after ``v2.ToDtype(torch.float32, scale=True)``); ``None`` means inputs
            are plain [0, 1] pixels. Inputs whose pixels, through ``mean``/``std``, fall well outside [0, 1] (0-255
            pixels, normalised images without ``mean=``/``std=``) are refused: the attack would change nothing.
        clamp: clip the output to the valid pixel range ([0, 1] pixels, mapped through ``mean``/``std``).
        temperature: NT-Xent temperature of the built-in loss.
        use_adversarial_bn: run the attack's encoder passes inside :func:`~idaa_transforms.adversarial_bn`, for
            encoders converted with :func:`~idaa_transforms.convert_to_dual_bn`; without ``anchor=`` this includes
            the built-in loss's pass on ``x`` (as in the original ResNet-18 code).
        check_finite: read the input's and the loss's values to reject NaN/Inf, pixels far outside [0, 1] and a
            gradient that is zero everywhere (each a silent no-op otherwise). ``None`` checks every call on the CPU
            but only the first input on an accelerator, where reading values forces a host-device synchronisation
            (so there the loss and its gradient are not read); ``False`` never reads them.
        generator: a ``torch.Generator`` on the CPU, or an int seed, for the sample selection and random start.
            It does not reach randomness inside the encoder or the loss (dropout, say): seed those with torch's
            global generator, or put the encoder in eval mode.

    Shape:
        - Input: ``(B, C, H, W)`` or ``(C, H, W)``, any ``H, W`` (the VAE runs at its own resolution), any floating
          dtype (the VAE runs in its own dtype), or a torchvision v2 sample (see :meth:`forward`).
        - Output: like the input: same shape, dtype and device, detached.

    Raises:
        ValueError: for arguments out of range or inputs of the wrong rank, channels, device or values.
        TypeError: for non-tensor or non-floating-point inputs, or an encoder whose dtype differs from the input's.
        RuntimeError: when called under ``torch.inference_mode()``, which forbids the gradient the attack takes.

    Notes:
        An empty batch is returned unchanged. With one sample the built-in NT-Xent has no negatives, so the
        built-in loss becomes its alignment term, the negative cosine similarity; an encoder with BatchNorm in
        training mode cannot run on one sample at all (a clear error), so transform batches, not single images.
        With ``p < 1`` and such an encoder, a lone chosen sample is attacked beside one other sample of the batch,
        whose own result is dropped, so that the encoder never sees a batch of one. The encoder is called directly,
        so pass ``ddp_model.module`` rather than a ``DistributedDataParallel`` wrapper. IDAA is not invertible: in
        ``kornia.augmentation.AugmentationSequential.inverse()`` it stays applied (kornia inverts only geometric
        steps).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig
        >>> vae = IdentityVAE(VAEConfig(width=16, latent_dim=8))
        >>> encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        >>> idaa = IDAATransform(vae, encoder=encoder, eps=0.1, generator=0)
        >>> x = torch.rand(4, 3, 32, 32)
        >>> idaa(x).shape
        torch.Size([4, 3, 32, 32])
        >>> parts = idaa.decompose(x)
        >>> bool(torch.allclose(parts.reconstruction + parts.residual, x, atol=1e-6))
        True
        >>> list(idaa.parameters())  # the VAE is frozen and kept out of the module tree
        []
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
            raise TypeError(f"vae: expected an IdentityVAE, got {type(vae).__name__}; the VAE comes first "
                            f"(IDAATransform(vae, encoder=model)), or load one with "
                            f"IDAATransform.from_pretrained(encoder=model).")
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
        self.random_start = _check_flag("random_start", random_start)
        if self.step_size == 0 and self.eps > 0 and not self.random_start:
            raise ValueError(f"step_size: 0 with eps={self.eps} and no random_start would leave every sample "
                             f"unchanged; give a positive step_size, or leave it out (the default is eps for one "
                             f"step).")
        self.norm = norm
        self.p = _check_range("p", p, 0.0, 1.0)
        self.clamp = _check_flag("clamp", clamp)
        self.temperature = _check_range("temperature", temperature, 1e-8)
        self.use_adversarial_bn = _check_flag("use_adversarial_bn", use_adversarial_bn)
        self.check_finite = check_finite if check_finite is None else _check_flag("check_finite", check_finite)
        self.loss_fn = loss_fn
        self.encoder = encoder  # referenced, not registered: it belongs to the caller (see __setattr__)
        self.generator = _generator(generator)
        self._warned: set[str] = set()
        self._values_seen = False  # whether an accelerator input's values were read once (see _check_input)

        cfg = vae.config
        channels = cfg.in_channels
        user_mean = _per_channel("mean", mean, channels)
        user_std = _per_channel("std", std, channels)
        if user_std is not None and bool((user_std <= 0).any()):
            raise ValueError(f"std: expected positive values, got {user_std.flatten().tolist()}.")
        self._normalised = user_mean is not None
        user_mean = torch.zeros(1, channels, 1, 1) if user_mean is None else user_mean
        user_std = torch.ones(1, channels, 1, 1) if user_std is None else user_std
        vae_mean = _per_channel("vae.config.input_mean", cfg.input_mean, channels)
        vae_std = _per_channel("vae.config.input_std", cfg.input_std, channels)
        # The VAE never trains here: frozen, in eval mode, and held outside the module tree (see __setattr__).
        self.vae = vae.requires_grad_(False).eval()
        # VAE space = user space * scale + shift; pixels = user space * user_std + user_mean. Plain tensors, not
        # buffers (nothing for DDP to broadcast or a checkpoint to store); _apply moves them with the VAE.
        device = next(vae.parameters()).device
        self._scale = (user_std / vae_std).to(device)
        self._shift = ((user_mean - vae_mean) / vae_std).to(device)
        self._low = (-user_mean / user_std).to(device)
        self._high = ((1 - user_mean) / user_std).to(device)
        self._pixels = (user_mean.flatten().tolist(), user_std.flatten().tolist())  # for the input check, on the host

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
            >>> import torch
            >>> from idaa_transforms import IDAATransform
            >>> idaa = IDAATransform.from_pretrained(loss_fn=lambda x, x_adv: (x_adv - x).pow(2).sum(), eps=0.05)
            >>> idaa(torch.rand(2, 3, 32, 32)).shape
            torch.Size([2, 3, 32, 32])
        """
        if isinstance(name_or_path, nn.Module):
            raise TypeError(f"name_or_path: expected a Hub repo id, a folder or None, got a "
                            f"{type(name_or_path).__name__}; pass the model as encoder=...")
        hub_options, options = HubOptions.split(options)
        vae = IdentityVAE.from_pretrained(name_or_path, **hub_options)
        return cls(vae, encoder, loss_fn, **options)

    # -- module plumbing: the VAE and the encoder are held, not registered ----------------------------------------
    _HELD = ("vae", "encoder")
    _CONSTANTS = ("_scale", "_shift", "_low", "_high")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._HELD or name in self._CONSTANTS:
            self.__dict__[name] = value  # never a submodule or buffer, whatever the value is
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> IDAATransform:
        """``.to()``, ``.cuda()``, ``.half()``, ... move and cast the held VAE and constants like submodules."""
        super()._apply(fn, recurse)
        if recurse:
            self.vae._apply(fn)
        for name in self._CONSTANTS:
            self.__dict__[name] = fn(self.__dict__[name])
        return self

    def train(self, mode: bool = True) -> IDAATransform:
        """Set the mode of the transform; the VAE stays in eval mode (its statistics are part of the checkpoint)."""
        super().train(mode)
        self.vae.eval()
        return self

    # -- public API ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decompose(self, x: Tensor) -> Decomposition:
        """Split ``x`` into the reconstruction ``G(x)`` and the residual ``R(x) = x - G(x)``, in the caller's space.

        Args:
            x: the batch, ``(B, C, H, W)`` or ``(C, H, W)``, any floating dtype.

        Returns:
            A :class:`Decomposition` whose ``reconstruction`` and ``residual`` have ``x``'s shape, dtype and memory
            layout.

        Example:
            >>> from idaa_transforms import IdentityVAE, VAEConfig
            >>> idaa = IDAATransform(IdentityVAE(VAEConfig(width=16, latent_dim=8)))
            >>> idaa.decompose(torch.rand(2, 3, 48, 48)).reconstruction.shape
            torch.Size([2, 3, 48, 48])
        """
        x, unbatched = self._check_input(x)
        mu = self._encode(x)
        reconstruction = self._decode(mu, x).to(x.dtype)
        parts = Decomposition(reconstruction, x - reconstruction, mu)
        return Decomposition(*(t.squeeze(0) for t in parts)) if unbatched else parts

    def forward(self, *inputs: Any, loss_fn: LossFn | None = None, anchor: Tensor | None = None) -> Any:
        """Return the adversarial views of ``x``.

        Args:
            inputs: the batch ``x``, ``(B, C, H, W)`` or ``(C, H, W)``; or, as in a ``torchvision.transforms.v2``
                pipeline, a sample (tuple, dict, ... of tensors): its images (``tv_tensors.Image``, or else the first
                plain tensor) are transformed and come back with their type; boxes, masks, labels and any other
                entries pass through untouched. Several plain floating-point tensors shaped alike, without a
                ``tv_tensors.Image``, are refused: a batch left unstacked would have only its first image
                transformed.
            loss_fn: ``loss_fn(x, x_adv) -> scalar`` for this call, overriding the one given at construction.
            anchor: ``encoder(x)`` if the caller has it already (e.g. from its own forward pass); it is detached and
                saves the built-in loss one encoder pass.

        Returns:
            ``x_adv`` like ``x`` (same shape, dtype, device and memory layout; detached), or the sample with its
            images replaced.
        """
        if len(inputs) == 1 and type(inputs[0]) is Tensor:  # the common case: one plain batch
            return self._views(inputs[0], loss_fn, anchor)
        if not inputs:
            raise TypeError("IDAATransform: expected an image batch (B, C, H, W), got no input.")
        return self._transform_sample(inputs if len(inputs) > 1 else inputs[0], loss_fn, anchor)

    # -- the algorithm ---------------------------------------------------------------------------------------------
    def _views(self, x: Tensor, loss_fn: LossFn | None, anchor: Tensor | None) -> Tensor:
        require_autograd("IDAATransform")
        x, unbatched = self._check_input(x)
        loss = resolve_loss(loss_fn if loss_fn is not None else self.loss_fn, self.encoder, self._encoder_loss,
                            "IDAATransform")
        check_encoder(self.encoder, x, "IDAATransform", builtin_loss=loss == self._encoder_loss)
        check_anchor(anchor, x, "IDAATransform")
        warn_without_dual_bn(self.encoder, self.use_adversarial_bn, "IDAATransform", self._warned)
        warn_without_modules(self.encoder, "IDAATransform", self._warned)
        if x.shape[0] == 0:
            return x.detach()

        chosen = self._choose_samples(x.shape[0])
        if chosen is None:
            adv = self._attack(x, loss, anchor)
        elif chosen.numel() == 0:
            adv = x.detach()
        else:
            count = chosen.numel()
            if count == 1 and x.shape[0] > 1 and trains_batchnorm(self.encoder):  # a companion: sample 0 (1 for 0)
                chosen = torch.cat([chosen, (chosen == 0).long()])
            index = chosen.to(x.device, non_blocking=True)
            part = x.index_select(0, index)
            part_anchor = None if anchor is None else anchor.index_select(0, index)
            adv = x.detach().clone().index_copy_(0, index[:count], self._attack(part, loss, part_anchor)[:count])
        return adv.squeeze(0) if unbatched else adv

    def _attack(self, x: Tensor, loss: Callable[[Tensor, Tensor, Tensor | None], Tensor], anchor: Tensor | None) -> Tensor:
        precision = adversary_precision(x, self.encoder, loss == self._encoder_loss, "IDAATransform", self._warned,
                                        self.vae)
        with batch_of_one_explained("IDAATransform"), precision:
            return self._attack_latent(x, loss, anchor)

    def _attack_latent(self, x: Tensor, loss: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                       anchor: Tensor | None) -> Tensor:
        with torch.no_grad():
            mu = self._encode(x)
        self._check_step_fits(mu.dtype)
        check_loss = reads_values(x, self.check_finite)
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
                grad = loss_gradient(value, z, check_finite=check_loss)
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
        # The direction in float32 whatever the gradient's size: rows scaled to a largest entry of 1 first, so that
        # neither a tiny gradient's norm (below a floor) nor a float16 one (where the floor is 0: 0 / 0) distorts it.
        grad = grad.float()
        grad = grad / grad.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        z = z + (self.step_size * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(z.dtype)
        delta = (z - center).float()
        return center + (delta * (self.eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)).to(
            z.dtype)

    def _check_step_fits(self, dtype: torch.dtype) -> None:
        """``eps`` and ``step_size`` must leave the latent's arithmetic finite in ``dtype`` (pure Python, no sync)."""
        largest = torch.finfo(dtype).max
        if self.norm == "l2":  # the L2 norm squares and sums latent_dim components
            limit = math.sqrt(largest / self.vae.config.latent_dim) / 4
        else:
            limit = largest / 4
        if max(self.eps, self.step_size) > limit:
            raise ValueError(
                f"eps/step_size: {max(self.eps, self.step_size):g} overflows the VAE's {dtype} latent with "
                f"norm={self.norm!r}; use values <= {limit:.3g} (latents are of order 1: the paper uses eps = 0.1)."
            )

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
        """The posterior mean of ``x`` (caller's space, any dtype), computed in the VAE's dtype."""
        v = (x * self._scale + self._shift).to(next(self.vae.parameters()).dtype)
        size = self.vae.config.image_size
        if v.shape[-2:] != (size, size):
            v = F.interpolate(v, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.vae.posterior_mean(v).to(v.dtype)  # under autocast too: the attack's steps need its precision

    def _decode(self, z: Tensor, like: Tensor) -> Tensor:
        """``G`` at latent ``z``, resized to ``like``'s resolution, mapped to the caller's space (VAE dtype) and laid
        out in memory as ``like`` is (channels_last or contiguous), so that every output keeps the caller's layout."""
        g = self.vae.decode(z)
        if g.shape[-2:] != like.shape[-2:]:
            g = F.interpolate(g, size=like.shape[-2:], mode="bilinear", align_corners=False)
        return ((g - self._shift) / self._scale).contiguous(memory_format=_layout_of(like))

    def _encoder_loss(self, x: Tensor, x_adv: Tensor, anchor: Tensor | None) -> Tensor:
        return encoder_loss(self.encoder, x, x_adv, anchor, self.temperature, self.use_adversarial_bn)

    def _transform_sample(self, sample: Any, loss_fn: LossFn | None, anchor: Tensor | None) -> Any:
        """torchvision v2 semantics: transform the images of a sample, pass everything else through."""
        from torch.utils._pytree import tree_flatten, tree_unflatten
        from torchvision import tv_tensors

        leaves, spec = tree_flatten(sample)
        for leaf in leaves:
            if callable(leaf) and not isinstance(leaf, Tensor):
                raise TypeError(
                    f"IDAATransform: got a {type(leaf).__name__} beside the images; loss_fn and anchor are "
                    "keyword-only: idaa(x, loss_fn=..., anchor=...) (other positional inputs form a v2 sample)."
                )
            if isinstance(leaf, tv_tensors.Video) or type(leaf).__module__.startswith("PIL."):
                raise TypeError(
                    f"IDAATransform: cannot transform a {type(leaf).__name__}; convert images to float tensors "
                    "first (e.g. v2.ToImage(), v2.ToDtype(torch.float32, scale=True)), or pass video frames as a "
                    "(T, C, H, W) batch."
                )
        images = [i for i, leaf in enumerate(leaves) if isinstance(leaf, tv_tensors.Image)]
        if not images:  # as in v2: without Image entries, the first plain tensor is the image
            plain = [i for i, leaf in enumerate(leaves)
                     if isinstance(leaf, Tensor) and not isinstance(leaf, tv_tensors.TVTensor)]
            alike = [i for i in plain if leaves[i].shape == leaves[plain[0]].shape and leaves[i].is_floating_point()]
            if len(alike) > 1 and leaves[plain[0]].is_floating_point():
                raise TypeError(
                    f"IDAATransform: got {len(alike)} image tensors of shape {tuple(leaves[plain[0]].shape)}, but it "
                    "transforms one batch (a v2 sample's first plain tensor, the others passing through); stack "
                    "them into one (B, C, H, W) batch with torch.stack, or mark the images with tv_tensors.Image."
                )
            images = plain[:1]
        if not images:
            raise TypeError(
                "IDAATransform: expected a torch.Tensor image batch (B, C, H, W), or a sample holding one, got "
                f"{type(sample).__name__} of {sorted({type(leaf).__name__ for leaf in leaves})}."
            )
        for i in images:
            image = leaves[i]
            out = self._views(image.as_subclass(Tensor), loss_fn, anchor)
            leaves[i] = tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.Image) else out
        return tree_unflatten(leaves, spec)

    # -- validation --------------------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> tuple[Tensor, bool]:
        x, unbatched = check_images(x, "IDAATransform", check_finite=False)
        channels = self.vae.config.in_channels
        if x.shape[1] != channels:
            raise ValueError(
                f"IDAATransform: the VAE expects {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})."
            )
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
        size = self.vae.config.image_size
        if max(x.shape[-2:]) > RESOLUTION_RATIO * size:
            self._warn_once(
                "resolution",
                f"IDAATransform: inputs are {x.shape[-2]}x{x.shape[-1]} px but the VAE works at {size} px, so G(x) "
                f"and its perturbation hold only what {size} px can express; use a VAE trained near the input "
                "resolution (see the README).",
            )
        # Values are read on the CPU, everywhere with check_finite=True, and on the first call on an accelerator
        # too (one synchronisation, once), so that 0-255 inputs never train silently on a no-op attack.
        first = self.check_finite is None and not self._values_seen and not reads_values(x, None)
        if (reads_values(x, self.check_finite) or first) and x.numel():
            self._values_seen |= first
            low, high = self._pixel_range(x.detach())
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("IDAATransform: the input contains NaN or Inf values.")
            if low < -PIXEL_RANGE_SLACK or high > 1 + PIXEL_RANGE_SLACK:
                raise ValueError(self._range_error(low, high))
        return x, unbatched

    def _pixel_range(self, x: Tensor) -> tuple[float, float]:
        """The lowest and highest pixel of ``x``, in [0, 1] pixel units (through ``mean``/``std`` when given)."""
        if not self._normalised:  # one pass: NaN and Inf propagate to the extremes
            return tuple(float(v) for v in torch.aminmax(x))
        low, high = (v.tolist() for v in torch.aminmax(x.transpose(0, 1).reshape(x.shape[1], -1), dim=1))
        if not all(map(math.isfinite, low + high)):
            return math.nan, math.nan
        mean, std = self._pixels
        return (min(v * s + m for v, s, m in zip(low, std, mean)),
                max(v * s + m for v, s, m in zip(high, std, mean)))

    def _range_error(self, low: float, high: float) -> str:
        """Why inputs whose pixels span ``[low, high]`` are refused, and what to do."""
        if not self._normalised:
            if high > PIXEL_SCALE_LIMIT:
                return (f"IDAATransform: inputs reach {high:.1f}, like 0-255 pixels, but [0, 1] pixels are expected "
                        f"without mean=/std= (the VAE would saturate and the attack change nothing); divide the "
                        f"images by 255 (inputs normalised before the transform: pass the normalisation's mean= and "
                        f"std=).")
            return (f"IDAATransform: inputs range over [{low:.2f}, {high:.2f}], well outside the [0, 1] pixels "
                    f"expected without mean=/std= (the VAE would see them out of its range and the attack change "
                    f"next to nothing); if the pipeline normalises before the transform, pass the same mean= and "
                    f"std=.")
        scale = " (like 0-255 pixels)" if high > PIXEL_SCALE_LIMIT else ""
        return (f"IDAATransform: through mean= and std=, the inputs are pixels in [{low:.2f}, {high:.2f}]{scale}, "
                f"well outside [0, 1]; scale the images to [0, 1] before normalising them (e.g. "
                f"v2.ToDtype(torch.float32, scale=True)) and give mean= and std= in [0, 1] pixel units, as "
                f"v2.Normalize takes them after that.")

    def _warn_once(self, key: str, message: str) -> None:
        warn_once(self._warned, key, message)

    def extra_repr(self) -> str:
        cfg = self.vae.config
        return (
            f"eps={self.eps}, steps={self.steps}, step_size={self.step_size}, norm={self.norm!r}, "
            f"random_start={self.random_start}, p={self.p}, clamp={self.clamp}, "
            f"vae=<frozen {cfg.image_size} px, {cfg.latent_dim} latents>"
        )
