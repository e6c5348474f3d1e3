"""Train an :class:`~idaa_transforms.IdentityVAE` and write it as a Hub-layout checkpoint folder.

The objective is the original IDAA training's: pixel MSE plus ``0.1`` times the KL term, AdamW, and a learning rate
decaying linearly to zero. The output folder holds ``config.json``, ``model.safetensors``, a model card
(``README.md``) with the data, the command and held-out reconstruction figures, a reconstruction grid
(``reconstructions.png``), per-epoch metrics (``metrics.jsonl``) and ``trainer_state.pt`` for ``--resume``.

Example (CIFAR-10, the paper's VAE, on a GPU)::

    python -m idaa_transforms.train_vae --dataset cifar10 --epochs 300 --amp --out runs/vae-cifar10

Offline (the photographs that install with scikit-image / scikit-learn)::

    python -m idaa_transforms.train_vae --dataset photos --epochs 2 --width 32 --latent-dim 64 --out runs/vae-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from idaa_transforms._cli import HelpFormatter
from idaa_transforms._rng import rng_state, set_rng_state
from idaa_transforms.data import (EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS, batches, dataset_to_tensors, make_dataset,
                                  photo_crops)
from idaa_transforms.vae import IdentityVAE, VAEConfig, vae_loss

__all__ = ["build_parser", "train_vae", "reconstruction_metrics", "baseline_metrics", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idaa-train-vae",
        description="Train the identity VAE of IDAA (MSE + KL) and save it as a Hub-layout checkpoint folder.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "stl10", "imagefolder", "photos"],
                      help="torchvision datasets are downloaded to --data-dir; 'photos' is the offline corpus")
    data.add_argument("--data-dir", default="data", help="dataset root (imagefolder: <dir>/train/<class>/*.png)")
    data.add_argument("--no-download", action="store_true", help="never download; fail if the data is missing")
    data.add_argument("--crops-per-photo", type=_positive_int, default=2048, help="'photos': training crops per photograph")
    data.add_argument("--held-out-crops", type=_positive_int, default=256, help="'photos': held-out crops per photograph")
    model = parser.add_argument_group("model")
    model.add_argument("--image-size", type=_positive_int, default=32)
    model.add_argument("--width", type=_positive_int, default=128, help="bottleneck channels")
    model.add_argument("--latent-dim", type=_positive_int, default=512)
    model.add_argument("--num-downsamplings", type=_positive_int, default=2)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=_positive_int, default=300)
    optim.add_argument("--batch-size", type=_positive_int, default=128)
    optim.add_argument("--lr", type=float, default=5e-4)
    optim.add_argument("--weight-decay", type=float, default=1e-2)
    optim.add_argument("--kl-weight", type=float, default=0.1)
    run = parser.add_argument_group("run")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cuda, cpu, cuda:1... (default: cuda if available)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--workers", type=int, default=4, help="DataLoader workers for on-disk datasets")
    run.add_argument("--out", default="runs/vae", help="output folder (a Hub-layout checkpoint)")
    run.add_argument("--resume", action="store_true", help="continue from <out>/trainer_state.pt")
    run.add_argument("--save-every", type=_positive_int, default=10, help="epochs between checkpoints")
    run.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return parser


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, str]:
    """Training and held-out sets, and a sentence describing them for the model card."""
    if args.dataset == "photos":
        train_names = VAE_PHOTOS + GRAY_PHOTOS
        train = photo_crops(train_names, args.crops_per_photo, args.image_size, split="all", seed=args.seed)
        held_out = photo_crops(EVAL_PHOTOS, args.held_out_crops, args.image_size, split="all", seed=args.seed + 1)
        about = (
            f"{len(train)} random crops (sides 32-160 px, resized to {args.image_size} px) of the photographs "
            f"{', '.join(train_names)} (scikit-image / scikit-learn bundled data; greyscale ones replicated to RGB). "
            f"Held out: {len(held_out)} crops of photographs never seen in training: {', '.join(EVAL_PHOTOS)}."
        )
        return train, held_out, about
    common = dict(root=args.data_dir, download=not args.no_download, image_size=args.image_size)
    train = make_dataset(args.dataset, train=True, **common)
    held_out = make_dataset(args.dataset, train=False, **common)
    about = f"{args.dataset} training split ({len(train)} images); held out: its test split ({len(held_out)} images)."
    return train, held_out, about


def _normalisation(config: VAEConfig, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The VAE's input normalisation as ``(1, C, 1, 1)`` mean and std tensors."""
    mean = torch.tensor(config.input_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.input_std, device=device).view(1, -1, 1, 1)
    return mean, std


@torch.no_grad()
def _identity_pixels(vae: IdentityVAE, x: Tensor) -> Tensor:
    """``G(x)`` of [0, 1] images, in [0, 1] pixel space, from the posterior mean."""
    mean, std = _normalisation(vae.config, x.device)
    return (vae.decode(vae.encode((x - mean) / std).mu) * std + mean).float()


def reconstruction_metrics(vae: IdentityVAE, images: Tensor, batch_size: int = 512) -> dict[str, float]:
    """Pixel-space MSE and PSNR (dB, [0, 1] images) of ``G(x)`` over ``images`` in [0, 1]."""
    was_training = vae.training
    vae.eval()
    total = torch.zeros((), device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        total += F.mse_loss(_identity_pixels(vae, x), x.float(), reduction="sum")
    vae.train(was_training)
    mse = total.item() / images.numel()
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def baseline_metrics(images: Tensor) -> dict[str, float]:
    """PSNR (dB) of simple detail-removing baselines on ``images`` in [0, 1], for comparison with a VAE's ``G(x)``."""
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


def save_reconstruction_grid(vae: IdentityVAE, images: Tensor, path: Path, count: int = 16) -> None:
    """PNG with rows x, G(x), R(x) (amplified 4x around grey)."""
    from torchvision.utils import save_image

    x = images[:count]
    g = _identity_pixels(vae.eval(), x)
    residual = (4 * (x - g) + 0.5).clamp(0, 1)
    save_image(torch.cat([x, g.clamp(0, 1), residual]), path, nrow=x.shape[0], padding=1)


def _model_card(args, config: VAEConfig, about: str, epochs_done: int, held_out: dict, baselines: dict,
                command: str, seconds: float) -> str:
    rows = "\n".join(f"| {name} | {psnr:.2f} |" for name, psnr in baselines.items())
    return f"""---
library_name: idaa_transforms
tags:
- idaa
- vae
- image-augmentation
---

# IdentityVAE ({args.dataset}, {config.image_size} px, latent {config.latent_dim}, width {config.width})

The generative model of an `idaa_transforms.IDAATransform` (identity-disentangled adversarial augmentation):
`G(x) = decode(encode(x))` is the identity part of an image, `R(x) = x - G(x)` the residual detail.

```python
from idaa_transforms import IDAATransform
idaa = IDAATransform.from_pretrained("<this repo or folder>", encoder=model, eps=0.1)
```

## Training data
{about}

## Training
- objective: pixel MSE + {args.kl_weight} x KL (KL normalised by batch x channels x latent size, as in the original)
- optimiser: AdamW (betas 0.5, 0.9), lr {args.lr} decaying linearly to 0, weight decay {args.weight_decay}, batch {args.batch_size}
- epochs: {epochs_done}; device: {args.device}{' (bf16 autocast)' if args.amp else ''}; wall time {seconds / 60:.1f} min
- command: `{command}`

## Held-out reconstruction
PSNR of `G(x)` against `x`, in [0, 1] pixel space, on the held-out images described above:

| model | PSNR (dB) |
|---|---|
| **this VAE, G(x)** | **{held_out['psnr']:.2f}** (MSE {held_out['mse']:.5f}) |
{rows}

The baselines remove detail without learning anything: each image's mean colour (the floor), bilinear down- and
up-sampling by 2, 4 and 8, and Gaussian blurs. Where `G(x)` falls between two of them tells how much detail it keeps;
`R(x) = x - G(x)` carries the rest, so `G(x) + R(x) == x` whatever the PSNR.
"""


def train_vae(args: argparse.Namespace, command: str | None = None) -> Path:
    """Run the training described by ``args`` (see :func:`build_parser`); returns the output folder."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set, held_set, about = _datasets(args)
    held_images = dataset_to_tensors(held_set)[0][:2048].to(device)
    config = VAEConfig(image_size=args.image_size, width=args.width, latent_dim=args.latent_dim,
                       num_downsamplings=args.num_downsamplings)
    vae = IdentityVAE(config).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1 - epoch / args.epochs)
    state_path = out / "trainer_state.pt"
    start_epoch, seconds = 0, 0.0
    if args.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: {state_path} does not exist; train without --resume first.")
        state = torch.load(state_path, map_location=device, weights_only=True)
        saved = state.get("config", config.to_dict())
        if saved != config.to_dict():
            changed = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
            raise ValueError(f"--resume: {state_path} holds a VAE with other settings (name: (saved, now)): {changed}.")
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, seconds = state["epoch"], state["seconds"]
        set_rng_state(state["rng"], device)  # the flips are drawn on the device
    mean, std = _normalisation(config, device)
    command = command or "python -m idaa_transforms.train_vae " + shlex.join(sys.argv[1:])
    metrics_path = out / "metrics.jsonl"
    # A fresh run starts the file anew; a resumed one drops the epochs after its checkpoint, which it runs again.
    kept = []
    if start_epoch and metrics_path.is_file():
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= start_epoch]
    metrics_path.write_text("".join(line + "\n" for line in kept))
    for epoch in range(start_epoch, args.epochs):
        vae.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        steps = 0
        data = batches(train_set, args.batch_size, seed=args.seed * 100003 + epoch, device=device,
                       num_workers=args.workers if device.type == "cuda" else 0)
        bar = tqdm(data, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress, leave=False)
        for images, _ in bar:
            flip = torch.rand(images.shape[0], 1, 1, 1, device=device) < 0.5
            x = (torch.where(flip, images.flip(-1), images) - mean) / std
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
        seconds += time.perf_counter() - started
        held = reconstruction_metrics(vae, held_images)
        record = {"epoch": epoch + 1, "loss": loss_sum.item() / max(steps, 1), "held_out_mse": held["mse"],
                  "held_out_psnr": held["psnr"], "lr": scheduler.get_last_lr()[0], "seconds": seconds}
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if not args.no_progress:
            tqdm.write(f"epoch {epoch + 1}: loss {record['loss']:.4f}  held-out PSNR {held['psnr']:.2f} dB")
        last = epoch + 1 == args.epochs
        if last or (epoch + 1) % args.save_every == 0:
            torch.save({"model": vae.state_dict(), "config": config.to_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "seconds": seconds,
                        "rng": rng_state(device)},
                       state_path)
    vae.eval()
    held = reconstruction_metrics(vae, held_images)
    card = _model_card(args, config, about, args.epochs, held, baseline_metrics(held_images.float()), command, seconds)
    (out / "README.md").write_text(card)
    vae.save_pretrained(out)
    save_reconstruction_grid(vae, held_images, out / "reconstructions.png")
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (``idaa-train-vae``)."""
    args = build_parser().parse_args(argv)
    out = train_vae(args, command=None if argv is None else "idaa-train-vae " + shlex.join(argv))
    print(f"checkpoint written to {out}")
    return out


if __name__ == "__main__":
    main()
