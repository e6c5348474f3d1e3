"""SimCLR views of an image batch, made on the device inside the training step (the SSL trainers, the VAE trainer).

One pipeline, two implementations of it: a random resized crop (area fraction in ``[min_scale, 1]``, aspect ratio
in :data:`CROP_RATIO`), a horizontal flip (:data:`FLIP_P`), a colour jitter (:data:`JITTER`, applied with
probability :data:`JITTER_P`) and a greyscale conversion (:data:`GRAYSCALE_P`).

* ``backend="fast"`` (the default): :class:`SimCLRViews`, the same operations with kornia's parameter draws and
  formulas, written as a few batched tensor operations: one ``grid_sample`` crops, resizes and flips the whole
  batch, the colour steps are batched arithmetic, masks choose the samples, and all random draws are made on the
  batch's device (no host-device synchronisation, no per-sample Python loop).
* ``backend="kornia"``: the four kornia augmentations in an ``nn.Sequential``, as the trainers used before.

Example:
    >>> import torch
    >>> views = simclr_views(32)
    >>> views(torch.rand(4, 3, 32, 32)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BACKENDS", "CROP_RATIO", "FLIP_P", "JITTER", "JITTER_P", "GRAYSCALE_P", "ViewParams", "SimCLRViews",
           "simclr_views"]

BACKENDS = ("fast", "kornia")
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue (kornia's / torchvision's ColorJitter)
JITTER_P = 0.8
GRAYSCALE_P = 0.2

_LUMA = (0.299, 0.587, 0.114)  # kornia's rgb_to_grayscale weights
_CROP_TRIES = 10  # kornia's (and torchvision's) RandomResizedCrop: ten tries, then a fallback crop


class ViewParams(NamedTuple):
    """The random choices of one call of :class:`SimCLRViews`, one row per sample, on the batch's device.

    Attributes:
        box: ``(B, 4)`` crop in input pixels: left, top, width, height (whole numbers, as kornia draws them).
        flip: ``(B,)`` bool, mirrored samples.
        jitter: ``(B,)`` bool, samples that get the colour jitter.
        factors: ``(B, 4)`` brightness, contrast and saturation factors, and the hue shift in turns.
        order: order of the colour steps for the whole batch (0 brightness, 1 contrast, 2 saturation, 3 hue), drawn
            once per call, as kornia does.
        gray: ``(B,)`` bool, samples converted to greyscale.
    """

    box: Tensor
    flip: Tensor
    jitter: Tensor
    factors: Tensor
    order: tuple[int, ...]
    gray: Tensor


class SimCLRViews(nn.Module):
    """One random SimCLR view per sample of an image batch, in a few batched operations.

    Equivalent to kornia's ``RandomResizedCrop((size, size), scale=(min_scale, 1))`` (bilinear, ``align_corners``,
    slice cropping), ``RandomHorizontalFlip()``, ``ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)`` and
    ``RandomGrayscale(p=0.2)`` in sequence: the same parameter distributions and the same formulas, including the
    colour steps' clamps and their random order (one order per call). Outputs agree with kornia's for the same
    parameters up to float rounding (see ``tests/trainers/test_augment.py``).

    The module holds no weights and need not be moved: it works on the batch's device. It computes without
    gradient.

    Args:
        size: output side in pixels.
        min_scale: smallest crop area as a fraction of the image.
        jitter: colour-jitter strengths (brightness, contrast, saturation, hue), as kornia's and torchvision's
            ``ColorJitter`` take them: factors drawn in ``[1 - s, 1 + s]``, the hue shift in ``[-h, h]`` turns.
        generator: ``None`` (torch's global generators), an int seed, or a ``torch.Generator`` on the batch's
            device. The per-sample draws come from it; the colour order from a CPU generator with the same seed.

    Shape:
        - Input: :math:`(B, 3, H, W)`, floats in ``[0, 1]`` or ``uint8`` in ``[0, 255]``.
        - Output: :math:`(B, 3, size, size)`, the input's float dtype (``float32`` for ``uint8``).

    Raises:
        ValueError: for a ``size`` or ``min_scale`` out of range, or an input that is not an RGB batch.
        TypeError: for a ``generator`` that is not a ``torch.Generator`` or an int.

    Example:
        >>> import torch
        >>> views = SimCLRViews(16, generator=0)
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> v = views(x)
        >>> v.shape, v.dtype, bool(((v >= 0) & (v <= 1)).all())
        (torch.Size([2, 3, 16, 16]), torch.float32, True)
        >>> torch.equal(SimCLRViews(16, generator=0)(x), v)  # a seed reproduces a call
        True
    """

    def __init__(self, size: int = 32, min_scale: float = 0.2, generator: torch.Generator | int | None = None, *,
                 jitter: tuple[float, float, float, float] = JITTER) -> None:
        super().__init__()
        _check_options(size, min_scale, jitter)
        self.size = int(size)
        self.min_scale = float(min_scale)
        self.jitter = tuple(float(v) for v in jitter)
        self._seed: int | None = None
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._order_generator: torch.Generator | None = None
        if isinstance(generator, int) and not isinstance(generator, bool):
            self._seed = generator
            self._order_generator = torch.Generator().manual_seed(generator)
        elif isinstance(generator, torch.Generator):
            self._device_generators[generator.device] = generator
            self._order_generator = generator if generator.device.type == "cpu" else \
                torch.Generator().manual_seed(generator.initial_seed())
        elif generator is not None:
            raise TypeError(f"generator: expected a torch.Generator or an int seed, got {type(generator).__name__}.")
        self._constants: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        return f"size={self.size}, min_scale={self.min_scale}, jitter={self.jitter}"

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x)
        return self.apply(x, self.make_params(x.shape, x.device))

    # -- choosing ----------------------------------------------------------------------------------------------------
    def make_params(self, batch_shape: torch.Size | tuple[int, ...], device: torch.device) -> ViewParams:
        """Draw the random choices for a batch of ``batch_shape`` ``(B, C, H, W)`` on ``device``.

        The crop follows kornia's ``ResizedCropGenerator``: ten tries of an area fraction, uniform in
        ``[min_scale, 1]``, and a log-uniform aspect ratio in :data:`CROP_RATIO`, rounded to whole pixels; the first
        try that fits is kept, else the whole image (or the largest centred crop within the ratio range).
        """
        batch, _, height, width = batch_shape
        generator = self._generator(device)
        u = torch.rand(batch, 2 * _CROP_TRIES + 9, device=device, generator=generator)
        low, span = self._constant(device, torch.float32)[2:]

        tries = u[:, :_CROP_TRIES]
        area = (tries * (1 - self.min_scale) + self.min_scale) * (height * width)
        log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        ratio = (u[:, _CROP_TRIES:2 * _CROP_TRIES] * (log_high - log_low) + log_low).exp()
        w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.int().argmax(1, keepdim=True)  # the first try that fits (argmax returns the first maximum)
        fallback_w, fallback_h = _fallback_crop(height, width)
        any_fit = fits.any(1)
        w = torch.where(any_fit, w.gather(1, first).squeeze(1), fallback_w).clamp(1, width)
        h = torch.where(any_fit, h.gather(1, first).squeeze(1), fallback_h).clamp(1, height)
        k = 2 * _CROP_TRIES
        left = (u[:, k] * (width - w + 1)).floor()
        top = (u[:, k + 1] * (height - h + 1)).floor()
        order = tuple(torch.randperm(4, generator=self._order_generator).tolist())  # on the host: no device sync
        return ViewParams(
            box=torch.stack([left, top, w, h], dim=1),
            flip=u[:, k + 2] < FLIP_P,
            jitter=u[:, k + 3] < JITTER_P,
            factors=u[:, k + 4:k + 8] * span + low,
            order=order,
            gray=u[:, k + 8] < GRAYSCALE_P,
        )

    # -- doing -------------------------------------------------------------------------------------------------------
    def apply(self, x: Tensor, params: ViewParams) -> Tensor:
        """The views of ``x`` for given ``params``: deterministic (no random draws).

        Args:
            x: ``(B, 3, H, W)`` floats in ``[0, 1]`` or ``uint8``.
            params: from :meth:`make_params` for ``x.shape``.

        Returns:
            ``(B, 3, size, size)`` views in ``[0, 1]``.
        """
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if not x.is_floating_point():
            x = x.to(torch.float32).div_(255)
        elif x.dtype in (torch.float16, torch.bfloat16):  # 8-11 bit mantissas: crop coordinates would be off
            x = x.float()
        out = self._crop_flip(x, params)
        jittered = out
        for step in params.order:
            jittered = _COLOUR_STEPS[step](self, jittered, params.factors[:, step].to(out.dtype).view(-1, 1, 1, 1))
        # Masks as 0/1 weights of lerp, which returns either end exactly and is cheaper than torch.where on the CPU.
        out = torch.lerp(out, jittered, params.jitter.to(out.dtype).view(-1, 1, 1, 1))
        return torch.lerp(out, self._luma(out), params.gray.to(out.dtype).view(-1, 1, 1, 1)).to(dtype)

    def _crop_flip(self, x: Tensor, params: ViewParams) -> Tensor:
        # kornia crops by slicing and resizes each crop with bilinear interpolation and align_corners=True: output
        # column j samples the crop at j * (w - 1) / (size - 1). A flip reverses the columns. One grid_sample does both.
        _, _, height, width = x.shape
        t = torch.linspace(0, 1, self.size, device=x.device, dtype=x.dtype)
        left, top, w, h = params.box.to(x.dtype).unbind(1)
        tx = torch.where(params.flip[:, None], 1 - t, t)
        gx = (left[:, None] + tx * (w[:, None] - 1)) * (2 / max(width - 1, 1)) - 1
        gy = (top[:, None] + t * (h[:, None] - 1)) * (2 / max(height - 1, 1)) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def _brightness(self, x: Tensor, factor: Tensor) -> Tensor:
        return (x * factor).clamp_(0, 1)

    def _contrast(self, x: Tensor, factor: Tensor) -> Tensor:
        mean = self._luma(x).mean((-2, -1), keepdim=True)
        return torch.lerp(mean, x, factor).clamp_(0, 1)

    def _saturation(self, x: Tensor, factor: Tensor) -> Tensor:
        return torch.lerp(self._luma(x), x, factor).clamp_(0, 1)

    def _hue(self, x: Tensor, turns: Tensor) -> Tensor:
        # kornia's RGB -> HSV, a hue rotation, HSV -> RGB, in one pass: the hue in sextants as kornia computes it
        # (from the first maximal channel), then each channel from the value v = max and the chroma v s = max - min
        # with the closed form c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + hue) mod 6, n = 5, 3, 1 for red,
        # green, blue. (kornia's s divides by v + 1e-8: the outputs differ by less than 1e-7.)
        high, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
        delta = high - low
        r, g, b = x.split(1, dim=1)
        sextant = torch.where(r == high, g - b, torch.where(g == high, torch.add(b - r, delta, alpha=2),
                                                            torch.add(r - g, delta, alpha=4)))
        sextant = sextant / delta.clamp_min(torch.finfo(x.dtype).tiny)  # grey pixels: 0 / tiny = 0, as kornia
        k = (sextant + (turns * 6 + self._constant(x.device, x.dtype)[1])).remainder_(6)
        return high - delta * torch.minimum(k, 4 - k).clamp_(0, 1)

    def _luma(self, x: Tensor) -> Tensor:
        return (x * self._constant(x.device, x.dtype)[0]).sum(1, keepdim=True)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _constant(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Luma weights, hue sextant offsets, jitter lows and spans on ``device`` (made once: a copy to a GPU waits)."""
        key = (device, dtype)
        if key not in self._constants:
            b, c, s, h = self.jitter
            low = [1 - b, 1 - c, 1 - s, -h]
            span = [2 * b, 2 * c, 2 * s, 2 * h]
            self._constants[key] = (
                torch.tensor(_LUMA, device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor((5.0, 3.0, 1.0), device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor(low, device=device, dtype=dtype),
                torch.tensor(span, device=device, dtype=dtype),
            )
        return self._constants[key]

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self._seed is not None and device not in self._device_generators:
            self._device_generators[device] = self._order_generator if device.type == "cpu" else \
                torch.Generator(device).manual_seed(self._seed)
        if not self._device_generators:
            return None
        generator = self._device_generators.get(device)
        if generator is None:
            found = next(iter(self._device_generators))
            raise ValueError(f"generator: it is on {found} but the batch is on {device}; pass a generator on the "
                             "batch's device or an int seed.")
        return generator


_COLOUR_STEPS = (SimCLRViews._brightness, SimCLRViews._contrast, SimCLRViews._saturation, SimCLRViews._hue)


def _fallback_crop(height: int, width: int) -> tuple[float, float]:
    """kornia's crop when no try fits: the whole image, or its largest centred part within the ratio range."""
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        return float(width), float(math.floor(round(width / CROP_RATIO[0])))
    if in_ratio > CROP_RATIO[1]:
        return float(math.floor(round(height * CROP_RATIO[1]))), float(height)
    return float(width), float(height)


def _check_options(image_size: int, min_scale: float, jitter: tuple[float, ...] = JITTER) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}.")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale: expected a fraction in (0, 1], got {min_scale!r}.")
    if len(jitter) != 4 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in jitter[:3]) \
            or not isinstance(jitter[3], (int, float)) or not 0 <= jitter[3] <= 0.5:
        raise ValueError(f"jitter: expected (brightness, contrast, saturation, hue) strengths in [0, 1] and a hue in "
                         f"[0, 0.5], got {jitter!r}.")


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"views: expected a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 4 or x.shape[1] != 3 or not (x.is_floating_point() or x.dtype == torch.uint8):
        raise ValueError(f"views: expected a (B, 3, H, W) RGB batch of floats in [0, 1] or uint8, got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}.")


def simclr_views(image_size: int = 32, min_scale: float = 0.2, *, backend: str = "fast",
                 generator: torch.Generator | int | None = None,
                 jitter: tuple[float, float, float, float] = JITTER) -> nn.Module:
    """Random resized crop, horizontal flip, colour jitter (p=0.8) and greyscale (p=0.2) of an image batch.

    Each call of the returned module draws new parameters per sample, from torch's global random generators unless
    a ``generator`` is given (seed them for reproducibility).

    Args:
        image_size: output side in pixels.
        min_scale: smallest crop area as a fraction of the image (0.2 for CIFAR in the IDAA paper).
        backend: ``"fast"`` (:class:`SimCLRViews`, also takes ``uint8`` batches) or ``"kornia"`` (the same
            augmentations as kornia modules, ``[0, 1]`` float batches).
        generator: for the fast backend, see :class:`SimCLRViews`.
        jitter: colour-jitter strengths (brightness, contrast, saturation, hue); the SSL views use
            :data:`JITTER`, the IDAA authors' VAE training uses ``(0.8, 0.8, 0.8, 0.2)``.

    Returns:
        A module mapping a ``(B, 3, H, W)`` batch to one view per sample, ``(B, 3, image_size, image_size)``.

    Raises:
        ValueError: for an unknown backend, an option out of range, or a generator with the kornia backend.

    Example:
        >>> import torch
        >>> simclr_views(32, backend="kornia")(torch.rand(2, 3, 40, 40)).shape
        torch.Size([2, 3, 32, 32])
    """
    _check_options(image_size, min_scale, jitter)
    if backend == "fast":
        return SimCLRViews(image_size, min_scale, generator=generator, jitter=jitter)
    if backend != "kornia":
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}.")
    if generator is not None:
        raise ValueError("generator: only backend='fast' takes one; kornia draws from torch's global generators "
                         "(seed those with torch.manual_seed).")
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(min_scale, 1.0), ratio=CROP_RATIO),
        K.RandomHorizontalFlip(p=FLIP_P),
        K.ColorJitter(*jitter, p=JITTER_P),
        K.RandomGrayscale(p=GRAYSCALE_P),
    )
