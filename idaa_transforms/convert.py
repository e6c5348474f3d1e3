"""Convert the original IDAA authors' VAE checkpoints into :class:`~idaa_transforms.IdentityVAE` Hub folders.

The original code (Yang et al., ICML 2022) trains ``CVAE_cifar_withbn`` (32 px, two downsamplings) and
``CVAE_imagenet_withbn`` (224 px, five downsamplings) and saves their ``state_dict`` with ``torch.save``. Both are
``IdentityVAE`` models with ``output_norm="tanh_batchnorm"``; only the parameter names differ. This module reads such
a file (with ``weights_only=True``: no arbitrary pickle is executed), infers the variant, the width ``d`` and the
latent size ``z`` from the tensor shapes, renames every tensor (BatchNorm running statistics included) and writes a
checkpoint folder: ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

Command line::

    python -m idaa_transforms.convert vae_cifar.pth converted/idaa-vae-cifar10
    idaa-convert-original vae_imagenet.pth converted/idaa-vae-imagenet --overwrite

The converted VAE sees images normalised with the statistics of its training set (the CIFAR or ImageNet mean and
std, recorded in ``config.json``); :class:`~idaa_transforms.IDAATransform` maps the caller's normalisation to it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from idaa_transforms._cli import ArgumentParser, finite_float, positive_float
from idaa_transforms._hub import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, CheckpointError, write_model_card
from idaa_transforms.vae import IdentityVAE, ResidualBlock, VAEConfig

__all__ = [
    "ConversionError",
    "ORIGINAL_VARIANTS",
    "convert_original_checkpoint",
    "convert_state_dict",
    "load_original_state_dict",
    "to_original_state_dict",
    "main",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The original model classes, keyed by variant: encoder downsamplings, BatchNorms around the bottleneck, class
#: name, and the input normalisation of the original training.
ORIGINAL_VARIANTS: dict[str, dict] = {
    "cifar": dict(num_downsamplings=2, bottleneck_norm=False, class_name="CVAE_cifar_withbn",
                  input_mean=CIFAR_MEAN, input_std=CIFAR_STD),
    "imagenet": dict(num_downsamplings=5, bottleneck_norm=True, class_name="CVAE_imagenet_withbn",
                     input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD),
}

# Inside a residual block: the original ``convs`` Sequential is (LeakyReLU, Conv3x3, BN, LeakyReLU, Conv1x1).
_RESBLOCK_PARTS = {"convs.1": "conv1", "convs.2": "norm", "convs.4": "conv2"}
# Modules outside the two Sequentials.
_TOP_LEVEL = {"fc11": "fc_mu", "fc12": "fc_logvar", "fc21": "fc_decode", "bn": "output_norm"}
_WRAPPER_KEYS = ("state_dict", "model")
_PREFIX = "module."


class ConversionError(CheckpointError):
    """An original checkpoint could not be read or mapped; the message names the file and what is wrong."""


# -- the key mapping ---------------------------------------------------------------------------------------------
def _module_map(vae: IdentityVAE) -> dict[str, str]:
    """Original module path -> this package's module path, derived from ``vae``'s structure.

    The original ``encoder`` Sequential is the encoder stages, three entries each (conv, BN, ReLU), followed by the
    encoder trunk; the original ``decoder`` is the decoder trunk followed by the upsampling stages (ConvTranspose,
    BN, LeakyReLU; the last one a bare ConvTranspose).
    """
    mapping = dict(_TOP_LEVEL) if vae.output_norm is not None else {k: v for k, v in _TOP_LEVEL.items() if k != "bn"}

    def add_trunk(trunk: nn.Sequential, old: str, offset: int, new: str) -> None:
        for j, module in enumerate(trunk):
            src, dst = f"{old}.{offset + j}", f"{new}.{j}"
            if isinstance(module, ResidualBlock):
                mapping.update({f"{src}.{a}": f"{dst}.{b}" for a, b in _RESBLOCK_PARTS.items()})
            else:
                mapping[src] = dst

    for k in range(len(vae.encoder_stages)):
        mapping[f"encoder.{3 * k}"] = f"encoder_stages.{k}.conv"
        mapping[f"encoder.{3 * k + 1}"] = f"encoder_stages.{k}.norm"
    add_trunk(vae.encoder_trunk, "encoder", 3 * len(vae.encoder_stages), "encoder_trunk")
    add_trunk(vae.decoder_trunk, "decoder", 0, "decoder_trunk")
    offset = len(vae.decoder_trunk)
    for k, stage in enumerate(vae.decoder_stages):
        if isinstance(stage, nn.ConvTranspose2d):
            mapping[f"decoder.{offset + 3 * k}"] = f"decoder_stages.{k}"
        else:
            mapping[f"decoder.{offset + 3 * k}"] = f"decoder_stages.{k}.conv"
            mapping[f"decoder.{offset + 3 * k + 1}"] = f"decoder_stages.{k}.norm"
    return mapping


def _variant(cfg: VAEConfig) -> str:
    return next(name for name, v in ORIGINAL_VARIANTS.items() if v["num_downsamplings"] == cfg.num_downsamplings)


def _rename(key: str, mapping: Mapping[str, str]) -> str | None:
    module, _, leaf = key.rpartition(".")
    target = mapping.get(module)
    return None if target is None else f"{target}.{leaf}"


def _original_keys(vae: IdentityVAE) -> dict[str, str]:
    """This package's state-dict key -> the original key, for every tensor of ``vae``."""
    inverse = {v: k for k, v in _module_map(vae).items()}
    out = {}
    for key in vae.state_dict():
        original = _rename(key, inverse)
        if original is None:  # a structure the original classes never had
            raise ConversionError(f"IdentityVAE tensor {key!r} has no counterpart in the original layout.")
        out[key] = original
    return out


# -- reading -----------------------------------------------------------------------------------------------------
def _short_list(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _unwrap(obj: object, source: str) -> dict[str, Tensor]:
    """The tensor dict inside ``obj``: unwrap ``{"state_dict": ...}`` / ``{"model": ...}``, strip ``module.``."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise ConversionError(
            f"{source}: expected a state dict (a dict of tensors, optionally under 'state_dict' or 'model'), "
            f"found {kind}."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ConversionError(
            f"{source}: the dict holds no tensors (keys: {_short_list([str(k) for k in obj])}); expected the "
            "state_dict() of the original VAE."
        )
    if all(k.startswith(_PREFIX) for k in tensors):  # saved from a DataParallel wrapper
        tensors = {k[len(_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def _first_line(err: BaseException) -> str:
    """``err`` in a few words: its type, and the first line of its message where that says something."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:120]}" if len(text) > 8 else type(err).__name__


def load_original_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an original checkpoint with ``torch.load(..., weights_only=True)`` and return its tensor dict.

    Accepts a bare ``state_dict``, a dict wrapping it under ``"state_dict"`` or ``"model"``, and keys with the
    ``module.`` prefix of ``nn.DataParallel`` (stripped).

    Raises:
        ConversionError: the file is missing, unreadable, or holds no state dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder; pass the .pth file that the original code saved.")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise ConversionError(
                f"{path}: holds Python objects other than tensors (a whole pickled model?), which are never "
                "unpickled here; load it with the original code and save model.state_dict() instead."
            ) from None
        raise ConversionError(f"{path}: not a PyTorch checkpoint (its bytes are not a tensor pickle); expected the "
                              ".pth file that the original code saved with torch.save(model.state_dict(), ...).") \
            from None
    except Exception as err:  # torch.load fails on other files with many types (KeyError, EOFError, RuntimeError...)
        raise ConversionError(f"{path}: not a PyTorch checkpoint, or a cut-off one ({_first_line(err)}); expected "
                              "the .pth file that the original code saved with torch.save(model.state_dict(), ...).") \
            from None
    return _unwrap(obj, str(path))


def _infer_config(state: Mapping[str, Tensor], source: str, input_mean, input_std) -> tuple[str, VAEConfig]:
    n = 0
    while (w := state.get(f"encoder.{3 * n}.weight")) is not None and w.ndim == 4:
        n += 1
    variant = next((name for name, v in ORIGINAL_VARIANTS.items() if v["num_downsamplings"] == n), None)
    if variant is None or "fc11.weight" not in state:
        found = "no 'fc11.weight'" if "fc11.weight" not in state else f"{n} encoder downsampling convolution(s)"
        raise ConversionError(
            f"{source}: unrecognised layout ({found}); expected the state_dict of the original CVAE_cifar_withbn "
            "(2 stride-2 convolutions 'encoder.0/3.weight', then 'fc11', 'fc12', 'fc21', 'decoder.*', 'bn') or "
            "CVAE_imagenet_withbn (5 convolutions 'encoder.0/3/6/9/12.weight'). "
            f"Keys found: {_short_list(list(state))}."
        )
    spec = ORIGINAL_VARIANTS[variant]
    width = int(state[f"encoder.{3 * (n - 1)}.weight"].shape[0])
    fc11 = state["fc11.weight"]
    latent_dim, flat = (int(s) for s in fc11.shape) if fc11.ndim == 2 else (0, 0)
    side = math.isqrt(flat // width) if flat and flat % width == 0 else 0
    if not side or side * side * width != flat:
        raise ConversionError(
            f"{source}: 'fc11.weight' has shape {tuple(fc11.shape)}, expected (z, d * f * f) with d = {width} "
            f"(the channels of 'encoder.{3 * (n - 1)}.weight') and a square f x f bottleneck."
        )
    try:
        config = VAEConfig(
            in_channels=3, image_size=side * 2**n, width=width, latent_dim=latent_dim, num_downsamplings=n,
            num_res_blocks=2, bottleneck_norm=spec["bottleneck_norm"], output_norm="tanh_batchnorm",
            input_mean=spec["input_mean"] if input_mean is None else tuple(input_mean),
            input_std=spec["input_std"] if input_std is None else tuple(input_std),
        )
    except ValueError as err:
        raise ConversionError(f"{source}: the inferred {variant} configuration is invalid: {err}") from None
    return variant, config


def convert_state_dict(
    state: Mapping[str, Tensor],
    *,
    source: str = "state dict",
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> IdentityVAE:
    """Build an :class:`IdentityVAE` (in eval mode) from the ``state_dict`` of an original IDAA VAE.

    Args:
        state: the original tensors (``module.`` prefixes and ``state_dict``/``model`` wrappers are accepted).
        source: how error messages name the state dict (e.g. its file).
        input_mean, input_std: the normalisation the original model was trained with, in pixel units; by default
            that of the variant (CIFAR-10 statistics for the CIFAR model, ImageNet's for the ImageNet model).

    Raises:
        ConversionError: the layout is not one of the original models', or tensors are missing, unexpected or of
            the wrong shape (the message lists them by their original names).

    Example:
        >>> vae = IdentityVAE(VAEConfig(width=16, latent_dim=8, output_norm="tanh_batchnorm"))
        >>> state = to_original_state_dict(vae)
        >>> state["fc11.weight"].shape, "encoder.6.convs.2.running_var" in state
        (torch.Size([8, 1024]), True)
        >>> converted = convert_state_dict(state)
        >>> converted.config.latent_dim, converted.config.input_mean
        (8, (0.4914, 0.4822, 0.4465))
    """
    tensors = _unwrap(state, source)
    variant, config = _infer_config(tensors, source, input_mean, input_std)
    vae = IdentityVAE(config)
    names = _original_keys(vae)
    expected = vae.state_dict()
    missing = [o for k, o in names.items() if o not in tensors]
    # Checkpoints written before PyTorch 0.4.1 have no BatchNorm counters; eval mode never reads them.
    lenient = [o for o in missing if o.endswith(".num_batches_tracked")]
    missing = [o for o in missing if o not in lenient]
    unexpected = sorted(set(tensors) - set(names.values()))
    wrong = [
        f"{o} {tuple(tensors[o].shape)} (expected {tuple(expected[k].shape)})"
        for k, o in names.items()
        if o in tensors and tensors[o].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        details = [f"{label}: {_short_list(keys)}" for label, keys in
                   (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
        raise ConversionError(
            f"{source}: looks like the original {ORIGINAL_VARIANTS[variant]['class_name']} (d={config.width}, "
            f"z={config.latent_dim}) but does not match its layout; {'; '.join(details)}."
        )
    new_state = {k: (tensors[o] if o in tensors else torch.zeros((), dtype=torch.long)) for k, o in names.items()}
    vae.load_state_dict(new_state, strict=True)
    return vae.eval()


def to_original_state_dict(vae: IdentityVAE) -> dict[str, Tensor]:
    """The tensors of ``vae`` under the original code's names (the inverse of :func:`convert_state_dict`).

    Only models with ``output_norm="tanh_batchnorm"``, two residual blocks and the CIFAR or ImageNet layout
    (2 downsamplings without, 5 with ``bottleneck_norm``) have an original counterpart.
    """
    cfg = vae.config
    layout = (cfg.num_downsamplings, cfg.bottleneck_norm)
    if cfg.output_norm != "tanh_batchnorm" or cfg.num_res_blocks != 2 or layout not in {
        (v["num_downsamplings"], v["bottleneck_norm"]) for v in ORIGINAL_VARIANTS.values()
    }:
        raise ConversionError(
            "to_original_state_dict: the original classes have output_norm='tanh_batchnorm', num_res_blocks=2 and "
            f"(num_downsamplings, bottleneck_norm) = (2, False) or (5, True); got {cfg.output_norm!r}, "
            f"{cfg.num_res_blocks}, {layout}."
        )
    names = _original_keys(vae)
    return {names[k]: v.detach().clone() for k, v in vae.state_dict().items()}


# -- writing -----------------------------------------------------------------------------------------------------
def _write_model_card(folder: Path, vae: IdentityVAE, checkpoint: Path, digest: str) -> Path:
    cfg = vae.config
    variant = _variant(cfg)
    class_name = ORIGINAL_VARIANTS[variant]["class_name"]
    mean = ", ".join(f"{m:g}" for m in cfg.input_mean)
    std = ", ".join(f"{s:g}" for s in cfg.input_std)
    summary = f"""This checkpoint was **converted** with `idaa-convert-original` (`idaa_transforms.convert`) from the
original IDAA implementation's `{class_name}` weights (Yang et al., *Identity-Disentangled Adversarial Augmentation for
Self-supervised Learning*, ICML 2022). It was not trained with `idaa_transforms`.

| | |
|---|---|
| source file | `{checkpoint.name}` |
| source SHA-256 | `{digest}` |
| original class | `{class_name}(d={cfg.width}, z={cfg.latent_dim})` |
| variant | {variant} |
| input size | {cfg.image_size} x {cfg.image_size} |
| latent size | {cfg.latent_dim} |
| input normalisation | mean ({mean}), std ({std}) |

Every tensor, BatchNorm running statistics included, was copied unchanged; only the names differ. In eval mode the
converted model reproduces the original's `mu = fc11(encoder(x))` and `G(x) = bn(tanh(decoder(fc21(mu))))`. Its
inputs and outputs live in the normalised space above (the output BatchNorm maps back to it), so give
`IDAATransform` the normalisation your own pipeline applies and it converts between the two."""
    usage = f"""```python
from idaa_transforms import IDAATransform, IdentityVAE

vae = IdentityVAE.from_pretrained("path/to/this/folder")
# mean/std: the normalisation your data pipeline applies (here the one the VAE was trained with)
idaa = IDAATransform(vae, encoder=model, mean=({mean}), std=({std}))
```"""
    licence = ("The weights are those of the original release: their terms apply, check them before redistributing "
               "this folder.")
    return write_model_card(folder, title=f"IDAA identity VAE ({variant}), converted from the original checkpoint",
                            summary=summary, sections={"Usage": usage, "License": licence},
                            tags=["idaa", "vae", "converted", variant])


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or that holds files the conversion writes (unless ``overwrite``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"out_dir: {out_dir} is a file, not a folder; give a folder for the checkpoint.")
    existing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConversionError(f"out_dir: {out_dir} already holds {', '.join(existing)}; choose another folder or "
                              "pass overwrite=True (--overwrite) to replace them.")


def convert_original_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    overwrite: bool = False,
) -> IdentityVAE:
    """Convert an original IDAA VAE checkpoint into a checkpoint folder loadable with ``IdentityVAE.from_pretrained``.

    Nothing is written until the whole file has been read and converted; each output file is then written through a
    temporary file and a rename, so an interrupted run leaves the previous files whole.

    Args:
        checkpoint: the ``.pth``/``.pt`` file saved by the original code (a ``state_dict``, possibly wrapped under
            ``"state_dict"`` or ``"model"``, possibly with ``module.`` prefixes).
        out_dir: the folder to write ``config.json``, ``model.safetensors`` and ``README.md`` to (created).
        input_mean, input_std: override the variant's input normalisation (pixel units; finite, std positive).
        overwrite: replace those files where ``out_dir`` already holds any of them.

    Returns:
        The converted VAE, in eval mode.

    Raises:
        ConversionError: the file cannot be read or is not an original VAE, ``out_dir`` is a file, cannot be written,
            or already holds one of the output files and ``overwrite`` is false.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    vae = convert_state_dict(load_original_state_dict(checkpoint), source=str(checkpoint),
                             input_mean=input_mean, input_std=input_std)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_model_card(out_dir, vae, checkpoint, digest)
        vae.save_pretrained(out_dir)  # keeps the card just written
    except OSError as err:
        raise ConversionError(f"out_dir: cannot write to {out_dir} ({err.strerror or err}); choose a writable "
                              "folder.") from None
    return vae


# -- command line --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="idaa-convert-original",
        description="Convert a VAE checkpoint of the original IDAA code (CVAE_cifar_withbn or CVAE_imagenet_withbn)\n"
                    "into an idaa_transforms checkpoint folder (config.json, model.safetensors, README.md).",
        epilog="""example:
  idaa-convert-original vae_cifar.pth runs/vae-authors
  # then: IDAATransform.from_pretrained("runs/vae-authors", encoder=model)""",
    )
    parser.add_argument("checkpoint", type=Path, help="the original .pth file (a state_dict)")
    parser.add_argument("out_dir", type=Path, help="folder to write the converted checkpoint to")
    parser.add_argument("--mean", type=finite_float, nargs=3, metavar=("R", "G", "B"),
                        help="input normalisation mean of the original training (default: the variant's)")
    parser.add_argument("--std", type=positive_float, nargs=3, metavar=("R", "G", "B"),
                        help="input normalisation std of the original training (default: the variant's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the config.json, model.safetensors and README.md already in out_dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``idaa-convert-original``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        vae = convert_original_checkpoint(args.checkpoint, args.out_dir, input_mean=args.mean, input_std=args.std,
                                          overwrite=args.overwrite)
    except ConversionError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2  # as every command of the package: 2 for what the user can fix
    cfg = vae.config
    print(f"Converted {args.checkpoint} ({_variant(cfg)}: d={cfg.width}, z={cfg.latent_dim}, "
          f"{cfg.image_size} px) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
