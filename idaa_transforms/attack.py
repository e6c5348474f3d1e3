"""What every adversary of this package shares: its protocol, input checks, the loss it ascends and its gradient.

:class:`~idaa_transforms.IDAATransform` (latent space) and :class:`~idaa_transforms.PixelFGSM` (pixel space) are both
:class:`Adversary` objects: ``adversary(x, *, loss_fn=None, anchor=None) -> x_adv``. Both maximise
:func:`encoder_loss` (or a user's ``loss_fn``) through :func:`loss_gradient`, and both run the caller's encoder inside
:func:`frozen_batchnorm_stats`, so its BatchNorm running statistics are never changed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import SyncBatchNorm, _BatchNorm, _NormBase

from idaa_transforms.bn import DualBatchNorm, adversarial_bn
from idaa_transforms.losses import negative_cosine, nt_xent

__all__ = [
    "Adversary",
    "LossFn",
    "frozen_batchnorm_stats",
    "call_without_buffer_updates",
    "modules_behind",
    "warn_without_modules",
    "encoder_loss",
    "loss_gradient",
    "require_autograd",
    "check_images",
    "reads_values",
    "check_anchor",
    "check_encoder",
    "resolve_loss",
    "warn_once",
    "warn_without_dual_bn",
    "trains_batchnorm",
    "batch_of_one_explained",
]

#: ``loss_fn(x, x_adv) -> scalar tensor``: the objective an adversary increases.
LossFn = Callable[[Tensor, Tensor], Tensor]

_STATS = ("running_mean", "running_var", "num_batches_tracked")

_HERE = os.path.dirname(os.path.abspath(__file__))
#: Where a warning does not point (see :func:`warn_once`): the adversaries' own modules, torch, and the pipelines
#: around them; the package's trainers are callers like any other.
_NOT_THE_CALLER = (
    *(os.path.join(_HERE, name) for name in ("attack.py", "transform.py", "pixel_fgsm.py", "_precision.py")),
    *(os.path.join(location, "") for spec in map(importlib.util.find_spec, ("torch", "torchvision", "kornia"))
      if spec is not None for location in spec.submodule_search_locations or ()),
)


class Adversary(Protocol):
    """What a trainer needs from an adversarial view: ``adversary(x, *, loss_fn=None, anchor=None) -> x_adv``.

    ``x`` is a batch ``(B, C, H, W)``; ``loss_fn(x, x_adv) -> scalar`` replaces the adversary's own loss for one call;
    ``anchor`` is ``encoder(x)`` when the caller has it already. The result has ``x``'s shape and dtype and is detached.
    :class:`~idaa_transforms.IDAATransform` and :class:`~idaa_transforms.PixelFGSM` implement it.

    Example:
        >>> from idaa_transforms import PixelFGSM
        >>> def hard_view(adversary: Adversary, x: Tensor) -> Tensor:
        ...     return adversary(x, loss_fn=lambda x, x_adv: (x_adv - x.flip(0)).square().mean())
        >>> hard_view(PixelFGSM(eps=0.25), torch.tensor([[[[0.0]]], [[[1.0]]]])).flatten().tolist()
        [-0.25, 1.25]
    """

    def __call__(self, x: Tensor, *, loss_fn: LossFn | None = None, anchor: Tensor | None = None) -> Tensor: ...


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Leave the BatchNorm running statistics of ``model`` exactly as they are while the block runs.

    BatchNorms in training mode still normalise with batch statistics, as in the caller's own forward pass; their
    running-statistics buffers are hidden for the duration (a BatchNorm without them updates nothing), so nothing is
    copied and those tensors are never written to. InstanceNorms that track running statistics are treated alike.
    Use it around any extra forward pass of a model under training that should not count as a training step, e.g.
    inside a ``loss_fn`` given to an adversary that does not know the model. The modules are changed for the
    duration of the block: do not run the same model in another thread then.

    Args:
        model: any module; its BatchNorms (``_BatchNorm`` subclasses, including those of
            :class:`~idaa_transforms.DualBatchNorm`) and InstanceNorms in training mode that track running
            statistics are frozen.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        >>> with frozen_batchnorm_stats(net):
        ...     _ = net(torch.randn(8, 3))
        >>> int(net[1].num_batches_tracked), net[1].running_mean.tolist()
        (0, [0.0, 0.0, 0.0])
    """
    with _frozen_stats([model]):
        yield model


@contextmanager
def _frozen_stats(roots: list[nn.Module]) -> Iterator[None]:
    """:func:`frozen_batchnorm_stats` for every module of ``roots`` (each once)."""
    saved: list[tuple[nn.Module, dict[str, Tensor | None]]] = []
    seen: set[int] = set()
    for m in (m for root in roots for m in root.modules()):
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, _NormBase) and m.training and m.track_running_stats and m.running_mean is not None:
            saved.append((m, {name: m._buffers[name] for name in _STATS}))
    try:
        for m, buffers in saved:
            for name in _STATS:
                m._buffers[name] = None
            if isinstance(m, SyncBatchNorm):  # it insists on a counter: give it a scratch one
                m._buffers["num_batches_tracked"] = torch.zeros_like(buffers["num_batches_tracked"])
        yield
    finally:
        for m, buffers in saved:
            m._buffers.update(buffers)


def modules_behind(encoder: Any) -> list[nn.Module]:
    """The modules a callable runs, as far as its Python objects tell: a module itself; a bound method's object; a
    ``functools.partial``'s function and arguments; a function's (a lambda's) closure and the globals its code
    names; a callable object's (or a method's object's) attributes. The adversaries leave the BatchNorm statistics
    of these modules alone, and check their device and dtype, when the encoder is given as
    ``encoder=self.forward_features`` or ``encoder=lambda v: self.backbone(v)``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        >>> [m is net for m in modules_behind(lambda v: net(v).relu())]
        [True]
        >>> modules_behind(torch.flatten)
        []
    """
    found: dict[int, nn.Module] = {}
    _collect_modules(encoder, found, depth=0)
    return list(found.values())


def _collect_modules(obj: Any, found: dict[int, nn.Module], depth: int) -> None:
    if isinstance(obj, nn.Module):
        found.setdefault(id(obj), obj)
        return
    if depth > 2 or obj is None or isinstance(obj, (Tensor, str, bytes, int, float, bool, type)):
        return
    if isinstance(obj, functools.partial):
        for part in (obj.func, *obj.args, *obj.keywords.values()):
            _collect_modules(part, found, depth + 1)
        return
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, nn.Module):
        found.setdefault(id(owner), owner)
        return
    if owner is not None:  # a method of another object: the modules it holds
        _held_modules(owner, found)
    code = getattr(obj, "__code__", None)
    if code is not None:  # a Python function or lambda
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            _collect_modules(value, found, depth + 1)
        names = getattr(obj, "__globals__", {})
        for name in code.co_names:
            value = names.get(name)
            if isinstance(value, nn.Module) or (callable(value) and hasattr(value, "__code__")):
                _collect_modules(value, found, depth + 1)
        return
    if callable(obj):  # a callable object: the modules it holds
        _held_modules(obj, found)


def _held_modules(obj: Any, found: dict[int, nn.Module]) -> None:
    """The modules among ``obj``'s attributes (those of its ``__dict__``)."""
    for value in getattr(obj, "__dict__", {}).values():
        if isinstance(value, nn.Module):
            found.setdefault(id(value), value)


def call_without_buffer_updates(module: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` inside :func:`frozen_batchnorm_stats` of the modules it runs (see
    :func:`modules_behind`: a bound method's or a lambda's modules too).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        >>> _ = call_without_buffer_updates(net, torch.randn(8, 3))
        >>> _ = call_without_buffer_updates(lambda v: net(v), torch.randn(8, 3))
        >>> int(net[1].num_batches_tracked)
        0
    """
    roots = _roots(module)
    if not roots:
        return module(*args, **kwargs)
    with _frozen_stats(roots):
        return module(*args, **kwargs)


def _embedding(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"encoder: the built-in loss needs encoder({what}) to return one tensor of embeddings (B, ...), got "
            f"{type(value).__name__}; wrap the encoder to return that tensor, or pass loss_fn=<callable(x, x_adv)>."
        )
    if value.dim() < 2:
        raise ValueError(
            f"encoder: the built-in loss needs encoder({what}) to return embeddings with one row per sample, (B, D), "
            f"got shape {tuple(value.shape)}; return (B, D) features, or pass loss_fn=<callable(x, x_adv)>."
        )
    return value.flatten(1)


def encoder_loss(
    encoder: Callable[[Tensor], Tensor],
    x: Tensor,
    x_adv: Tensor,
    anchor: Tensor | None = None,
    temperature: float = 0.5,
    adversarial: bool = False,
) -> Tensor:
    """The built-in attack objective: NT-Xent between ``encoder(x)`` (or ``anchor``) and ``encoder(x_adv)``.

    The encoder runs without touching its BatchNorm statistics, through its adversarial BatchNorms if
    ``adversarial``; ``anchor`` is detached. With one sample NT-Xent has no negatives, so the negative cosine
    similarity (its alignment term) is used.

    Raises:
        TypeError: if the encoder does not return a tensor.
        ValueError: if ``anchor`` does not have the shape of ``encoder(x_adv)``.
    """
    with adversarial_bn(adversarial):
        if anchor is None:
            with torch.no_grad():
                anchor = _embedding(call_without_buffer_updates(encoder, x), "x")
        embedding = _embedding(call_without_buffer_updates(encoder, x_adv), "x_adv")
    anchor = anchor.detach().flatten(1)
    if anchor.dtype != embedding.dtype:  # e.g. a float16 anchor from the caller's autocast, a bfloat16 attack
        common = torch.promote_types(anchor.dtype, embedding.dtype)
        anchor, embedding = anchor.to(common), embedding.to(common)
    if anchor.shape != embedding.shape:
        raise ValueError(
            f"anchor: expected encoder(x), shaped like encoder(x_adv) {tuple(embedding.shape)} after flattening, "
            f"got {tuple(anchor.shape)}."
        )
    if embedding.shape[0] == 1:
        return negative_cosine(anchor, embedding)
    return nt_xent(anchor, embedding, temperature)


def loss_gradient(value: Tensor, wrt: Tensor, check_finite: bool = False) -> Tensor:
    """``d value / d wrt`` for a scalar loss, or a clear error when the loss cannot give one.

    Args:
        value: the loss, a scalar tensor computed from ``wrt``.
        wrt: the leaf tensor to differentiate with respect to.
        check_finite: also reject a NaN or infinite loss, and a gradient that is zero everywhere (either would make
            the step a silent no-op). This reads values on the host: enable it on the CPU, or where a device
            synchronisation is acceptable.

    Raises:
        ValueError: if the loss is not a scalar, has no gradient path to ``wrt``, is not finite or has a zero
            gradient (with ``check_finite``), or if ``loss_fn`` already ran ``.backward()`` on it.
    """
    if not isinstance(value, Tensor) or value.ndim != 0:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"loss_fn: expected a scalar tensor (reduce it, e.g. with .mean()), got {got}.")
    if check_finite and not bool(torch.isfinite(value)):
        raise ValueError(f"loss_fn: the loss is {value.item()}, so its gradient says nothing; check the loss and inputs.")
    try:
        grad = torch.autograd.grad(value, wrt, allow_unused=True)[0] if value.requires_grad else None
    except RuntimeError:
        if wrt.grad is None:
            raise
        raise ValueError(
            "loss_fn: it called .backward() on the loss; return the loss instead, the adversary differentiates it."
        ) from None
    if grad is None:
        raise ValueError(
            "loss_fn: the loss has no gradient path to x_adv; compute it from x_adv without detaching, "
            "and do not call the transform's loss under torch.no_grad() inside loss_fn."
        )
    if check_finite and not bool(grad.any()):
        raise ValueError(
            "loss: its gradient is zero everywhere, so the attack step would change nothing; a loss at its minimum "
            "where x_adv == x (a squared distance, say) has no slope there (use random_start=True, or a loss with "
            "negatives like the built-in NT-Xent), and a round() or a comparison inside the loss has none anywhere."
        )
    return grad


def require_autograd(who: str) -> None:
    """Raise a clear error under ``torch.inference_mode()``, which forbids the gradient every adversary needs."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who}: the attack takes a gradient, which torch.inference_mode() forbids; call it outside "
            "inference mode (torch.no_grad() is fine)."
        )


def check_images(x: Any, who: str, check_finite: bool | None = None) -> tuple[Tensor, bool]:
    """Validate an image batch and add the batch dimension to a single image; returns ``(batch, was_unbatched)``.

    ``check_finite=None`` reads the values (NaN/Inf) of CPU tensors only: on an accelerator it would force a
    host-device synchronisation.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}.")
    if x.ndim not in (3, 4):
        raise ValueError(f"{who}: expected (B, C, H, W) or (C, H, W). Got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{who}: expected a floating-point image tensor, got {x.dtype}. "
            "Convert first, e.g. x.float() / 255 for uint8 images."
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{who}: expected non-empty images, got shape {tuple(x.shape)}.")
    if reads_values(x, check_finite) and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: the input contains NaN or Inf values.")
    unbatched = x.ndim == 3
    return (x.unsqueeze(0) if unbatched else x), unbatched


def reads_values(x: Tensor, check_finite: bool | None) -> bool:
    """Whether value checks may read ``x`` on the host: on the CPU by default, everywhere with ``check_finite``."""
    return x.device.type == "cpu" if check_finite is None else bool(check_finite)


def check_anchor(anchor: Any, x: Tensor, who: str) -> None:
    """``anchor`` must be ``encoder(x)``: a tensor on ``x``'s device with one row of at least one value per sample."""
    if anchor is None:
        return
    if not isinstance(anchor, Tensor) or anchor.ndim < 2 or anchor.shape[0] != x.shape[0]:
        shape = tuple(anchor.shape) if isinstance(anchor, Tensor) else type(anchor).__name__
        raise ValueError(f"anchor: expected encoder(x), a tensor with {x.shape[0]} rows (B, D), got {shape}.")
    if anchor.device != x.device:
        raise ValueError(f"anchor: expected a tensor on {x.device} like the input, got one on {anchor.device}.")


def check_encoder(encoder: Any, x: Tensor, who: str, builtin_loss: bool) -> None:
    """The encoder's device must be the input's; for the built-in loss, its dtype too (unless autocast is on and
    casts them: it leaves float64 alone)."""
    roots = _roots(encoder)
    param = next((p for root in roots for p in root.parameters() if p.is_floating_point()), None)
    if param is None:
        return
    if param.device != x.device:
        raise ValueError(f"{who}: input is on {x.device} but the encoder is on {param.device}.")
    casts = torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, param.dtype)
    if builtin_loss and param.dtype != x.dtype and not casts:
        raise TypeError(
            f"{who}: the built-in loss runs encoder(x_adv) in the input's dtype {x.dtype}, but the encoder's "
            f"parameters are {param.dtype}; convert one of them, run under torch.autocast, or pass loss_fn=."
        )


def resolve_loss(
    loss_fn: Any,
    encoder: Callable[[Tensor], Tensor] | None,
    builtin: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    who: str,
) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """The objective of one call: ``loss_fn`` (with ``encoder``'s BatchNorm statistics frozen) or the built-in one."""
    if loss_fn is None:
        if encoder is None:
            raise ValueError(
                f"{who} has no loss to increase: pass encoder=<model> (built-in NT-Xent) or "
                "loss_fn=<callable(x, x_adv) -> scalar>, at construction or per call."
            )
        return builtin
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(x, x_adv) -> scalar, got {type(loss_fn).__name__}.")
    roots = _roots(encoder)
    if roots:

        def protected(x: Tensor, x_adv: Tensor, anchor: Tensor | None) -> Tensor:
            with _frozen_stats(roots):
                return loss_fn(x, x_adv)

        return protected
    return lambda x, x_adv, anchor: loss_fn(x, x_adv)


# -- warnings and errors the adversaries share ---------------------------------------------------------------------
def warn_once(warned: set[str], key: str, message: str) -> None:
    """Warn with ``message`` the first time ``key`` is not in ``warned`` (an adversary's own set), pointing at the
    caller's line: the first frame outside the adversaries, torch, torchvision and kornia."""
    if key in warned:
        return
    warned.add(key)
    frame, level = sys._getframe(1), 2  # level 1 is this function, 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(_NOT_THE_CALLER):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def warn_without_dual_bn(encoder: Any, enabled: bool, who: str, warned: set[str]) -> None:
    """Warn once when ``use_adversarial_bn=True`` meets an encoder without :class:`DualBatchNorm`: it changes
    nothing there."""
    if enabled and "adversarial_bn" not in warned and (modules := _roots(encoder)) \
            and not any(isinstance(m, DualBatchNorm) for root in modules for m in root.modules()):
        warn_once(warned, "adversarial_bn", f"{who}: use_adversarial_bn=True, but the encoder has no DualBatchNorm, "
                                            f"so it changes nothing; convert the encoder with "
                                            f"convert_to_dual_bn(encoder) first.")


def trains_batchnorm(encoder: Any) -> bool:
    """Whether ``encoder`` holds a BatchNorm in training mode, which cannot run on a batch of one sample."""
    return any(isinstance(m, _BatchNorm) and m.training for root in _roots(encoder) for m in root.modules())


def _roots(encoder: Any) -> list[nn.Module]:
    """The modules to protect and check for ``encoder``: itself, or those behind a callable (none for ``None``)."""
    return [encoder] if isinstance(encoder, nn.Module) else modules_behind(encoder)


def warn_without_modules(encoder: Any, who: str, warned: set[str]) -> None:
    """Warn when ``encoder`` is a callable behind which no module can be found (:func:`modules_behind`): its
    BatchNorm statistics cannot be left untouched then."""
    if "modules" not in warned and not isinstance(encoder, nn.Module) and encoder is not None \
            and not modules_behind(encoder):  # once warned, no more searching on every call
        name = getattr(encoder, "__qualname__", type(encoder).__name__)
        warn_once(warned, "modules", f"{who}: no nn.Module found behind encoder={name} (not a module, a bound method "
                                     f"of one, a partial or a closure over one), so the running statistics of any "
                                     f"BatchNorm it runs are not protected from the attack's passes; pass the module "
                                     f"itself (encoder=model), or a loss_fn that runs it inside "
                                     f"frozen_batchnorm_stats(model).")


@contextmanager
def batch_of_one_explained(who: str) -> Iterator[None]:
    """Turn torch's error for a training BatchNorm on one sample into one line that says what to do."""
    try:
        yield
    except ValueError as err:
        if "Expected more than 1 value per channel when training" not in str(err):
            raise
        raise ValueError(f"{who}: the encoder's BatchNorm cannot run in training mode on a batch of one sample; "
                         f"transform batches of at least 2 images (after the DataLoader, not per sample), or call "
                         f"the encoder's eval() first.") from None
