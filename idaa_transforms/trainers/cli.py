"""Command line of the trainers: ``python examples/simclr_cifar.py --help`` (or ``python -m idaa_transforms.trainers``).

Example:
    >>> cfg = parse_args(["--dataset", "photos", "--arch", "small_cnn", "--no-idaa"])
    >>> cfg.dataset, cfg.arch, cfg.idaa, cfg.eps
    ('photos', 'small_cnn', False, 0.1)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from idaa_transforms._cli import HelpFormatter
from idaa_transforms.data import DATASETS
from idaa_transforms.trainers.engine import TrainConfig, train
from idaa_transforms.trainers.methods import METHODS
from idaa_transforms.trainers.models import ARCHS

__all__ = ["build_parser", "parse_args", "main"]

_EPILOG = """examples:
  # CIFAR-10 (downloaded to --data-dir), ResNet-18, IDAA with the shipped VAE, on a GPU
  python examples/simclr_cifar.py --epochs 200 --amp --out runs/simclr-idaa
  # the same without IDAA (the baseline)
  python examples/simclr_cifar.py --epochs 200 --amp --no-idaa --out runs/simclr
  # offline, a few minutes on a 2-core CPU
  python examples/simclr_cifar.py --dataset photos --arch small_cnn --epochs 15 --out runs/quickstart
  # several GPUs
  torchrun --nproc_per_node=4 examples/simclr_cifar.py --batch-size 512 --amp --out runs/simclr-4gpu

outputs in --out: metrics.jsonl (per epoch), idaa_grid.png (x, G(x), R(x), x_adv, |x_adv - x|),
checkpoint.pt (every --save-every epochs; continue with --resume), results.json (kNN and linear accuracy)."""


def build_parser(method: str = "simclr", prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``method`` is the default of ``--method``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Self-supervised training (SimCLR or BYOL) with and without IDAA, identity-disentangled "
                    "adversarial augmentation (Yang et al., ICML 2022). Views are made on the device with kornia.",
        epilog=_EPILOG, formatter_class=HelpFormatter)
    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="torchvision datasets are downloaded to --data-dir; 'photos' is offline (32x32 crops of five "
                        "photographs, labelled by photograph)")
    g.add_argument("--data-dir", default=d.data_dir, help="dataset root (imagefolder: <dir>/train/<class>/*.png)")
    g.add_argument("--no-download", dest="download", action="store_false", help="never download; fail if missing")
    g.add_argument("--crops-per-photo", type=int, default=d.crops_per_photo, help="'photos': crops per photograph")
    g.add_argument("--image-size", type=int, default=d.image_size, help="side of the training views")
    g = p.add_argument_group("model")
    g.add_argument("--method", default=method, choices=METHODS)
    g.add_argument("--arch", default=d.arch, choices=ARCHS, help="CIFAR ResNet-18, or a small CNN for CPUs")
    g.add_argument("--proj-hidden", type=int, default=d.proj_hidden, help="projection head hidden size")
    g.add_argument("--proj-dim", type=int, default=d.proj_dim, help="projection size")
    g.add_argument("--temperature", type=float, default=d.temperature, help="NT-Xent temperature (SimCLR)")
    g.add_argument("--byol-momentum", type=float, default=d.byol_momentum, help="base EMA momentum (BYOL)")
    g = p.add_argument_group("IDAA")
    g.add_argument("--no-idaa", dest="idaa", action="store_false", help="baseline: train without IDAA")
    g.add_argument("--vae", default=None, metavar="ID_OR_PATH",
                   help="VAE checkpoint: a Hub repo id or a local folder (default: the VAE shipped with the package)")
    g.add_argument("--eps", type=float, default=d.eps, help="latent perturbation radius")
    g.add_argument("--adversary", default=d.adversary, choices=("idaa", "pixel_fgsm"),
                   help="the third view: IDAA in the VAE's latent space, or a one-step pixel-space FGSM control")
    g.add_argument("--pixel-eps", type=float, default=d.pixel_eps,
                   help="L-inf step of --adversary pixel_fgsm, in [0, 1] pixel units")
    g.add_argument("--alpha", type=float, default=d.alpha, help="weight of L(v1, x_adv)")
    g.add_argument("--attack-steps", type=int, default=d.attack_steps, help="gradient steps of the attack")
    g.add_argument("--no-dual-bn", dest="dual_bn", action="store_false",
                   help="share BatchNorms between clean and adversarial views")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (over all processes)")
    g.add_argument("--optimizer", default=d.optimizer, choices=("adam", "sgd"))
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", default=d.schedule, choices=("cosine", "constant"), help="per-step LR schedule")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    g = p.add_argument_group("evaluation")
    g.add_argument("--knn-k", type=int, default=d.knn_k, help="neighbours of the kNN monitor")
    g.add_argument("--knn-every", type=int, default=d.knn_every, help="epochs between kNN evaluations")
    g.add_argument("--probe-steps", type=int, default=d.probe_steps, help="L-BFGS steps of the final linear probe")
    g = p.add_argument_group("run")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    g.add_argument("--device", default=None, help="cuda, cpu, cuda:1... (default: cuda if available; "
                                                  "under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--out", default=None, help="output folder (default: runs/<method>[-idaa])")
    g.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    g.add_argument("--save-every", type=int, default=d.save_every, help="epochs between checkpoints")
    g.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs in total (for time-limited jobs; then --resume)")
    g.add_argument("--workers", type=int, default=d.workers, help="loader workers for on-disk datasets")
    g.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    return p


def parse_args(argv: Sequence[str] | None = None, method: str = "simclr") -> TrainConfig:
    """Parse a command line into a :class:`TrainConfig` (invalid values raise ``SystemExit`` with a message)."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.method}{'-idaa' if args.idaa else ''}"
    try:
        return TrainConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def main(argv: Sequence[str] | None = None, method: str = "simclr") -> dict:
    """Parse the command line and train; returns the results."""
    return train(parse_args(argv, method))
