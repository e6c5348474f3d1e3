"""Train an :class:`~idaa_transforms.IdentityVAE` and write it as a Hub-layout checkpoint folder.

The recipe is the IDAA authors' (their ``train_vae.py --mode simclr``): the VAE learns to reconstruct SimCLR views of
the training images (random resized crop, horizontal flip, colour jitter 0.8/0.8/0.8/0.2 with p 0.8, greyscale with
p 0.2; made on the device), the loss is pixel MSE plus ``0.1`` times the KL term, AdamW with betas (0, 0.9) and a
learning rate decaying linearly to zero. The output folder holds ``config.json``, ``model.safetensors``, a model card
(``README.md``) with the data, the command and held-out figures (PSNR against bilinear down/up-sampling, the colour
kept by ``G(x)``, on the test images and on SimCLR views of them), a labelled reconstruction grid
(``reconstructions.png``), per-epoch metrics (``metrics.jsonl``) and ``trainer_state.pt`` for ``--resume``.

Example (CIFAR-10, the paper's VAE, on a GPU; the data folder holds torchvision's layout or train/ and test/ class
folders)::

    python -m idaa_transforms.train_vae --dataset cifar10 --data-dir data/cifar10 --epochs 300 --amp --out runs/vae-cifar10

Offline (the photographs that install with scikit-image / scikit-learn)::

    python -m idaa_transforms.train_vae --dataset photos --epochs 2 --width 32 --latent-dim 64 --out runs/vae-tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from idaa_transforms._cli import (INTERRUPTED_STATUS, MAX_MINUTES_HELP, STOP_AFTER_HELP, UNFINISHED_STATUS,
                                  ArgumentParser, deadline_after, device_name, interrupted, named_by_flags,
                                  next_epoch_would_overrun, non_negative_float, positive_float, positive_int)
from idaa_transforms._files import (VAE_RUN, atomic_torch_save, atomic_write_jsonl, atomic_write_text,
                                    changed_settings, claim_folder, describe_changes, load_torch_state,
                                    prepare_run_dir, remove_previous_run, removed_if_left_empty)
from idaa_transforms._grids import decomposition_rows, save_image_rows
from idaa_transforms._hub import write_model_card
from idaa_transforms._rng import rng_state, set_rng_state
from idaa_transforms.data import DATASETS, EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS, batches, class_balanced_subset, \
    load_images, memory_format_for, photo_crops, to_float_images, to_uint8_images
from idaa_transforms.vae import IdentityVAE, VAEConfig, vae_loss
from idaa_transforms.views import simclr_views

__all__ = ["build_parser", "train_vae", "reconstruction_metrics", "baseline_metrics", "colour_ratio",
           "vae_training_views", "main"]

STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
#: Files whose presence means a previous run lives in the output folder.
RUN_FILES = (STATE, METRICS, "model.safetensors", "config.json", "README.md", "reconstructions.png")
#: Settings that may change when a run is resumed: they do not change what it computes.
RESUMABLE = ("resume", "overwrite", "save_every", "save_dtype", "no_progress", "out", "download", "device")
#: What a state file of this trainer holds.
STATE_KEYS = ("model", "config", "settings", "optimizer", "scheduler", "epoch", "seconds", "metrics", "rng")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
AUGMENTS = ("simclr", "flip")
#: The authors' VAE views: torchvision's default crop scale and a stronger colour jitter than the SSL views'.
VAE_CROP_SCALE = 0.08
VAE_JITTER = (0.8, 0.8, 0.8, 0.2)
#: AdamW betas of the original training.
BETAS = (0.0, 0.9)
#: Images of the held-out split measured after every epoch (all of them are measured at the end).
EPOCH_HELD_OUT = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="idaa-train-vae",
        description="Train the VAE of IDAA (MSE + KL on SimCLR views) and save it as a Hub-layout checkpoint folder.",
        epilog="""examples:
  # the paper's CIFAR-10 VAE on a GPU (CIFAR-10 in data/cifar10: torchvision's layout or train/ and test/ folders)
  idaa-train-vae --dataset cifar10 --data-dir data/cifar10 --epochs 300 --amp --out runs/vae-cifar10
  # in 9-minute pieces: the same command again with --resume continues it
  idaa-train-vae --dataset cifar10 --data-dir data/cifar10 --epochs 300 --amp --out runs/vae-cifar10 --max-minutes 9
  # offline, a tiny VAE on the photographs that install with scikit-image
  idaa-train-vae --dataset photos --epochs 2 --width 32 --latent-dim 64 --out runs/vae-tiny

then: IDAATransform.from_pretrained("runs/vae-cifar10", encoder=model), or --vae runs/vae-cifar10 in idaa-train.""",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar10", choices=DATASETS,
                      help="'photos' is the offline corpus; the others read a local copy in --data-dir")
    data.add_argument("--data-dir", default="data",
                      help="cifar10/cifar100: torchvision's layout or train/<class>/ and test/<class>/ image folders; "
                           "imagefolder: train/<class>/ and test/<class>/ of any image type")
    data.add_argument("--download", action="store_true", help="let torchvision download CIFAR/STL-10 if not found")
    data.add_argument("--subset", type=positive_int, default=None, metavar="N",
                      help="train on a class-balanced, seeded subset of this many training images, and report on one "
                           "of at most as many test images")
    data.add_argument("--crops-per-photo", type=positive_int, default=2048, help="'photos': training crops per photograph")
    data.add_argument("--held-out-crops", type=positive_int, default=256, help="'photos': held-out crops per photograph")
    data.add_argument("--augment", default="simclr", choices=AUGMENTS,
                      help="simclr: the authors' SimCLR views (crop, flip, jitter 0.8, greyscale); flip: flips only")
    model = parser.add_argument_group("model")
    model.add_argument("--image-size", type=positive_int, default=32)
    model.add_argument("--width", type=positive_int, default=128, help="bottleneck channels")
    model.add_argument("--latent-dim", type=positive_int, default=512)
    model.add_argument("--num-downsamplings", type=positive_int, default=2)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=300)
    optim.add_argument("--batch-size", type=positive_int, default=128)
    optim.add_argument("--lr", type=positive_float, default=5e-4)
    optim.add_argument("--weight-decay", type=non_negative_float, default=1e-2)
    optim.add_argument("--kl-weight", type=non_negative_float, default=0.1)
    run = parser.add_argument_group("run")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cuda, cpu, cuda:1... (default: cuda if available)")
    run.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="runs/vae", help="output folder (a Hub-layout checkpoint)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its trainer_state.pt")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run.add_argument("--stop-after", type=positive_int, default=None, metavar="EPOCHS", help=STOP_AFTER_HELP)
    run.add_argument("--max-minutes", type=positive_float, default=None, metavar="MINUTES",
                     help=MAX_MINUTES_HELP)
    run.add_argument("--save-every", type=positive_int, default=10, help="epochs between checkpoints")
    run.add_argument("--save-dtype", default="float32", choices=SAVE_DTYPES,
                     help="dtype of the saved weights (loaded back into float32); float16 halves the folder")
    run.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return parser


# -- data ---------------------------------------------------------------------------------------------------------
def _datasets(args: argparse.Namespace) -> tuple[Tensor, Tensor, str]:
    """uint8 training and held-out images, and a sentence describing them for the model card."""
    if args.dataset == "photos":
        train_names = VAE_PHOTOS + GRAY_PHOTOS
        train = to_uint8_images(photo_crops(train_names, args.crops_per_photo, args.image_size, split="all",
                                            seed=args.seed).tensors[0])
        held_out = to_uint8_images(photo_crops(EVAL_PHOTOS, args.held_out_crops, args.image_size, split="all",
                                               seed=args.seed + 1).tensors[0])
        about = (
            f"{len(train)} random crops (sides 32-160 px, resized to {args.image_size} px) of the photographs "
            f"{', '.join(train_names)} (scikit-image / scikit-learn bundled data; greyscale ones replicated to RGB). "
            f"Held out: {len(held_out)} crops of photographs never seen in training: {', '.join(EVAL_PHOTOS)}."
        )
        return train, held_out, about
    common = dict(image_size=args.image_size, download=args.download)
    train, _ = load_images(args.dataset, args.data_dir, train=True, subset=args.subset, seed=args.seed, **common)
    held_out, held_labels = load_images(args.dataset, args.data_dir, train=False, **common)
    subset = f"a class-balanced subset (seed {args.seed}) of " if args.subset else ""
    held_text = f"its test split ({len(held_out)} images)"
    if args.subset and len(held_out) > args.subset:  # as the comparison harness does: at most as many as trained on
        held_text = (f"a class-balanced subset (seed 0) of {args.subset} of its test split's {len(held_out)} "
                     f"images")
        held_out = held_out[class_balanced_subset(held_labels, args.subset, seed=0)]
    about = (f"{subset}the {args.dataset} training split ({len(train)} images); held out: {held_text}, never seen "
             f"in training.")
    return train, held_out, about


def vae_training_views(image_size: int, augment: str = "simclr") -> nn.Module:
    """The views the VAE is trained on, made on the device from a ``[0, 1]`` (or uint8) batch.

    ``simclr`` is the authors' ``--mode simclr``: ``RandomResizedCrop(size)`` (scale 0.08-1), horizontal flip,
    ``ColorJitter(0.8, 0.8, 0.8, 0.2)`` with p 0.8 and greyscale with p 0.2, as the fused generator of
    :mod:`idaa_transforms.views`; ``flip`` is a horizontal flip only.

    Example:
        >>> views = vae_training_views(32)
        >>> views(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 3, 32, 32])
    """
    if augment == "flip":
        return _RandomFlip()
    if augment != "simclr":
        raise ValueError(f"augment: expected one of {AUGMENTS}, got {augment!r}.")
    return simclr_views(image_size, VAE_CROP_SCALE, jitter=VAE_JITTER)


class _RandomFlip(nn.Module):
    """Mirror each sample with probability 0.5 (draws from torch's generator on the batch's device)."""

    def forward(self, x: Tensor) -> Tensor:
        x = to_float_images(x)
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
        return torch.where(flip, x.flip(-1), x)


# -- measurements -------------------------------------------------------------------------------------------------
def _normalisation(config: VAEConfig, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The VAE's input normalisation as ``(1, C, 1, 1)`` mean and std tensors."""
    mean = torch.tensor(config.input_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.input_std, device=device).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def reconstruct(vae: IdentityVAE, x: Tensor) -> Tensor:
    """``G(x)`` of ``[0, 1]`` images (uint8 accepted), in ``[0, 1]`` pixel space, from the posterior mean."""
    x = to_float_images(x)
    mean, std = _normalisation(vae.config, x.device)
    return (vae.decode(vae.posterior_mean((x - mean) / std)) * std + mean).float()


def _over_batches(vae: IdentityVAE, images: Tensor, batch_size: int, fn) -> list[Tensor]:
    was_training = vae.training
    vae.eval()
    try:
        return [fn(to_float_images(images[i : i + batch_size]), reconstruct(vae, images[i : i + batch_size]))
                for i in range(0, images.shape[0], batch_size)]
    finally:
        vae.train(was_training)


def reconstruction_metrics(vae: IdentityVAE, images: Tensor, batch_size: int = 512) -> dict[str, float]:
    """Pixel-space MSE and PSNR (dB, [0, 1] images) of ``G(x)`` over ``images`` (uint8 or [0, 1] floats), and the
    colour it keeps (``colour_ratio``, see :func:`colour_ratio`), from one pass of the VAE."""
    sums = _over_batches(vae, images, batch_size, lambda x, g: torch.stack(
        [F.mse_loss(g, x, reduction="sum"), _chroma(g).sum(), _chroma(x).sum()]))
    squared_error, chroma_g, chroma_x = torch.stack(sums).sum(0).tolist()
    mse = squared_error / images.numel()
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "colour_ratio": chroma_g / max(chroma_x, 1e-12)}


def _chroma(x: Tensor) -> Tensor:
    """Per-image sum over pixels of the standard deviation across R, G, B (0 for a grey image)."""
    return x.std(dim=1, unbiased=False).flatten(1).sum(1)


def colour_ratio(vae: IdentityVAE, images: Tensor, batch_size: int = 512) -> float:
    """How much colour ``G(x)`` keeps: the mean per-pixel std across R, G, B of ``G(x)`` over that of ``x``.

    1.0 means as colourful as the input; a VAE that returns grey images scores 0.
    """
    return reconstruction_metrics(vae, images, batch_size)["colour_ratio"]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def baseline_metrics(images: Tensor) -> dict[str, float]:
    """PSNR (dB) of simple detail-removing baselines on ``images`` (uint8 or [0, 1]), to compare with ``G(x)``."""
    images = to_float_images(images)
    size = images.shape[-2:]
    results = {}
    results["per_image_mean_colour"] = F.mse_loss(images.mean(dim=(2, 3), keepdim=True).expand_as(images), images).item()
    for factor in (2, 4, 8):
        small = F.interpolate(images, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)
        up = F.interpolate(small, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        results[f"downsample_{factor}x_bilinear"] = F.mse_loss(up, images).item()
    for sigma in (1.0, 1.5):
        results[f"gaussian_blur_sigma{sigma}"] = F.mse_loss(_gaussian_blur(images, sigma), images).item()
    return {k: 10 * math.log10(1 / max(v, 1e-12)) for k, v in results.items()}


def held_out_report(vae: IdentityVAE, images: Tensor, image_size: int, seed: int = 0) -> dict[str, Any]:
    """PSNR, colour ratio and the baselines on ``images`` and on seeded SimCLR views of them."""
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        torch.manual_seed(seed)
        views = torch.cat([vae_training_views(image_size)(to_float_images(images[i : i + 1024])).clamp_(0, 1)
                           for i in range(0, images.shape[0], 1024)])
    report = {}
    for name, x in (("images", images), ("simclr_views", views)):
        report[name] = {**reconstruction_metrics(vae, x), "baselines_psnr": baseline_metrics(x)}
    report["count"] = images.shape[0]
    return report


def save_reconstruction_grid(vae: IdentityVAE, images: Tensor, path: Path, count: int = 12) -> None:
    """PNG with labelled rows x, G(x), R(x) (amplified 4x around grey) of ``count`` images spread over ``images``."""
    x = images[torch.linspace(0, images.shape[0] - 1, count, device=images.device).long()]
    g = _over_batches(vae, x, count, lambda x, g: g)[0]
    x = to_float_images(x)
    save_image_rows(decomposition_rows(x, g, x - g), path)


# -- the model card -----------------------------------------------------------------------------------------------
def _write_card(out: Path, args: argparse.Namespace, config: VAEConfig, about: str, epochs_done: int,
                report: dict[str, Any], command: str, seconds: float, images_per_second: float) -> None:
    def table(part: dict[str, Any]) -> str:
        rows = [f"| **this VAE, G(x)** | **{part['psnr']:.2f}** (MSE {part['mse']:.5f}) |"]
        rows += [f"| {name} | {psnr:.2f} |" for name, psnr in part["baselines_psnr"].items()]
        return "| model | PSNR (dB) |\n|---|---|\n" + "\n".join(rows)

    views = ("the authors' SimCLR views (RandomResizedCrop scale 0.08-1, flip, ColorJitter 0.8/0.8/0.8/0.2 with p 0.8, "
             "greyscale with p 0.2)" if args.augment == "simclr" else "horizontal flips")
    images, simclr = report["images"], report["simclr_views"]
    training = f"""- views: {views}, made on the device
- objective: pixel MSE + {args.kl_weight} x KL (KL normalised by batch x channels x latent size, as in the original)
- optimiser: AdamW (betas {BETAS[0]}, {BETAS[1]}), lr {args.lr} decaying linearly to 0, weight decay \
{args.weight_decay}, batch {args.batch_size}
- epochs: {epochs_done} of {args.epochs}; device: {args.device}{' (bf16 autocast)' if args.amp else ''}; training \
time {f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"} ({images_per_second:.0f} images/s)
- weights stored as {args.save_dtype} (loaded into float32)
- command: `{command}`"""
    held_out = f"""On the {report['count']} held-out images described above, in [0, 1] pixel space. PSNR of `G(x)` against `x`,
beside baselines that remove detail without learning anything (each image's mean colour, bilinear down- and
up-sampling by 2, 4 and 8, Gaussian blurs). Colour kept: the mean per-pixel standard deviation across R, G, B of
`G(x)` over that of `x` (1.0: all colour kept).

**Test images**: colour kept {images['colour_ratio']:.3f}

{table(images)}

**SimCLR views of the test images** (the kind of views the VAE is attacked on in training; seeded): colour kept
{simclr['colour_ratio']:.3f}

{table(simclr)}

`G(x) + R(x) == x` whatever the PSNR: a sharper VAE is not automatically a better one for IDAA, whose point is that
the latent step changes `G(x)` while `R(x)` keeps the identity."""
    write_model_card(
        out,
        title=f"IdentityVAE ({args.dataset}, {config.image_size} px, latent {config.latent_dim}, width {config.width})",
        summary="The generative model of an `idaa_transforms.IDAATransform` (identity-disentangled adversarial "
                "augmentation): `G(x) = decode(encode(x))` is the VAE's reconstruction, blurry by design, and the "
                "residual `R(x) = x - G(x)` keeps most of the identity-distinctive detail. IDAA moves the latent of "
                "`G(x)` and adds the original `R(x)` back.",
        sections={
            "Usage": "```python\nfrom idaa_transforms import IDAATransform\n"
                     "idaa = IDAATransform.from_pretrained(\"<this repo or folder>\", encoder=model, eps=0.1)\n```",
            "Training data": about,
            "Training": training,
            "Held-out reconstruction": held_out,
        },
        tags=["idaa", "vae", "image-augmentation"],
    )


# -- training -----------------------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("stop_after", "max_minutes", "threads")}


_MODEL_FLAGS = ("image_size", "width", "latent_dim", "num_downsamplings")


def _vae_config(args: argparse.Namespace) -> VAEConfig:
    """The model's :class:`VAEConfig`; a size it refuses is named by its flag (``--image-size``)."""
    try:
        return VAEConfig(**{name: getattr(args, name) for name in _MODEL_FLAGS})
    except ValueError as err:
        raise ValueError(named_by_flags(str(err), _MODEL_FLAGS)) from None


def _device(name: str) -> torch.device:
    try:
        device_name(name)
    except argparse.ArgumentTypeError:
        raise ValueError(f"--device: {name!r} is not a device; use cpu, cuda or cuda:<index>.") from None
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available on this machine; use --device cpu.")
    return device


def _metric_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A checkpoint's metric rows in today's keys, as the SSL trainer writes them (``seconds`` of that epoch,
    ``images_per_s``); checkpoints from before kept cumulative seconds and ``images_per_second``."""
    fixed, total = [], 0.0
    for row in rows:
        row = dict(row)
        if "images_per_second" in row:
            row["images_per_s"] = round(row.pop("images_per_second"), 1)
            row["seconds"], total = round(row["seconds"] - total, 3), row["seconds"]
        fixed.append(row)
    return fixed


def train_vae(args: argparse.Namespace, command: str | None = None) -> Path:
    """Run the training described by ``args`` (see :func:`build_parser`); returns the output folder.

    A run that fails to start leaves no empty ``--out`` behind."""
    return _claim_and_train(args, command)[0]


def _claim_and_train(args: argparse.Namespace, command: str | None) -> tuple[Path, bool]:
    """:func:`train_vae`, and whether the run trained its last epoch."""
    with removed_if_left_empty(args.out), claim_folder(args.out):
        return _train_vae(args, command)


def _train_vae(args: argparse.Namespace, command: str | None) -> tuple[Path, bool]:
    deadline = deadline_after(args.max_minutes)
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = prepare_run_dir(args.out, kind=VAE_RUN, resume=args.resume, overwrite=args.overwrite, markers=RUN_FILES,
                          checkpoint=STATE)
    state_path = out / STATE
    state = None
    if args.resume and not state_path.is_file():
        others = [name for name in RUN_FILES if (out / name).exists()]
        if others:
            raise FileNotFoundError(f"--resume: {out} holds a run ({', '.join(others)}) but no {STATE} to continue "
                                    f"it from; pass --overwrite to train it again, or choose another --out.")
        print(f"--resume: no {state_path} yet; starting from scratch.", file=sys.stderr)
    elif args.resume:
        state = load_torch_state(state_path, map_location=device, required=STATE_KEYS,
                                 kind="training state of idaa-train-vae")
        changed = changed_settings(state.get("settings", {}), _settings(args), ignore=RESUMABLE)
        if changed:
            raise ValueError(f"--resume: {state_path} was made with other settings "
                             f"({describe_changes(changed, saved='in it')}); resume with the same settings or start "
                             f"a new --out.")
    config = _vae_config(args)  # before the data is read: a bad size is refused at once
    torch.manual_seed(args.seed)
    train_images, held_images, about = _datasets(args)
    if args.batch_size > train_images.shape[0]:
        raise ValueError(f"--batch-size: {args.batch_size} is larger than the training set "
                         f"({train_images.shape[0]} images); use a smaller batch.")
    train_images, held_images = train_images.to(device), held_images.to(device)
    memory_format = memory_format_for(device)
    vae = IdentityVAE(config).to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=BETAS, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1 - epoch / args.epochs)
    start_epoch, seconds, images_seen, rows = 0, 0.0, 0, []
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, seconds, images_seen = state["epoch"], state["seconds"], state.get("images_seen", 0)
        rows = _metric_rows(state.get("metrics", []))
        set_rng_state(state["rng"], device)  # the views are drawn on the device
    mean, std = _normalisation(config, device)
    views = vae_training_views(args.image_size, args.augment)
    command = command or "python -m idaa_transforms.train_vae " + shlex.join(sys.argv[1:])
    if args.overwrite:  # only now, so that a run refused at start-up replaces nothing
        remove_previous_run(out, RUN_FILES)
    # The metrics file is the checkpoint's copy: epochs logged after the last checkpoint are run (and logged) again.
    atomic_write_jsonl(out / METRICS, rows)
    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    longest = 0.0  # the longest epoch of this call, for --max-minutes
    for epoch in range(start_epoch, last_epoch):
        vae.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        steps = 0
        data = batches(train_images, train_images, args.batch_size, seed=args.seed * 100003 + epoch)
        bar = tqdm(data, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress, leave=False,
                   total=train_images.shape[0] // args.batch_size)
        for images, _ in bar:
            x = ((views(images) - mean) / std).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                out_vae = vae(x)
                loss = vae_loss(x, out_vae.reconstruction.float(), out_vae.mu.float(), out_vae.logvar.float(),
                                args.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
        scheduler.step()
        epoch_seconds = time.perf_counter() - started
        seconds += epoch_seconds
        images_seen += steps * args.batch_size
        epoch_loss = loss_sum.item() / steps
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"epoch {epoch + 1}: the loss is {epoch_loss}; lower --lr (now {args.lr}) or "
                                     f"check the data. Nothing of this epoch was saved.")
        held = reconstruction_metrics(vae, held_images[:EPOCH_HELD_OUT])
        rows.append({"epoch": epoch + 1, "loss": epoch_loss, "held_out_mse": held["mse"],
                     "held_out_psnr": held["psnr"], "held_out_colour": held["colour_ratio"],
                     "lr": scheduler.get_last_lr()[0], "seconds": round(epoch_seconds, 3),
                     "images_per_s": round(steps * args.batch_size / epoch_seconds, 1)})
        atomic_write_jsonl(out / METRICS, rows)
        if not args.no_progress:
            tqdm.write(f"epoch {epoch + 1}: loss {epoch_loss:.4f}  held-out PSNR {held['psnr']:.2f} dB, colour kept "
                       f"{held['colour_ratio']:.3f}")
        longest = max(longest, time.perf_counter() - started)
        if epoch + 1 < last_epoch and next_epoch_would_overrun(deadline, longest):
            last_epoch = epoch + 1
        if epoch + 1 == last_epoch or (epoch + 1) % args.save_every == 0:
            atomic_torch_save({"model": vae.state_dict(), "config": config.to_dict(), "settings": _settings(args),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "epoch": epoch + 1, "seconds": seconds, "images_seen": images_seen,
                               "metrics": rows, "rng": rng_state(device)}, state_path)
        if epoch + 1 == last_epoch:
            break
    epochs_done = max(last_epoch, start_epoch)
    vae.eval()
    report = held_out_report(vae, held_images, args.image_size, seed=args.seed)
    rate = images_seen / seconds if seconds else 0.0
    copy.deepcopy(vae).to(getattr(torch, args.save_dtype)).save_pretrained(out)  # integer buffers stay as they are
    _write_card(out, args, config, about, epochs_done, report, command, seconds, rate)
    atomic_write_text(out / "held_out.json", json.dumps(
        {"epochs": epochs_done, "seconds": seconds, "images_per_s": round(rate, 1), **report}, indent=2) + "\n")
    save_reconstruction_grid(vae, held_images, out / "reconstructions.png")
    return out, epochs_done >= args.epochs


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``idaa-train-vae``); returns the exit status: 0 when the run finished, 3 when it
    stopped cleanly before its last epoch (``--max-minutes``, ``--stop-after``; ``--resume`` continues)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out, finished = _claim_and_train(args, "idaa-train-vae " + shlex.join(sys.argv[1:] if argv is None else argv))
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(INTERRUPTED_STATUS, interrupted(parser.prog, args.out))
    print(f"checkpoint written to {out}")
    return 0 if finished else UNFINISHED_STATUS


if __name__ == "__main__":
    sys.exit(main())
