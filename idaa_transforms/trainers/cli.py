"""Command line of the trainers: ``idaa-train`` (or ``python -m idaa_transforms.trainers``), built from
:class:`~idaa_transforms.trainers.config.TrainConfig`'s fields.

Example:
    >>> cfg = parse_args(["--dataset", "photos", "--arch", "small_cnn", "--no-idaa"])
    >>> cfg.dataset, cfg.arch, cfg.idaa, cfg.eps, cfg.out
    ('photos', 'small_cnn', False, 0.1, 'runs/simclr')
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from idaa_transforms._cli import INTERRUPTED_STATUS, UNFINISHED_STATUS, ArgumentParser, interrupted, named_by_flags
from idaa_transforms.trainers.config import TRAIN_FIELDS, TrainConfig, add_train_arguments, config_from_args

__all__ = ["build_parser", "parse_args", "main"]

_EPILOG = """examples:
  # CIFAR-10 from a local copy in --data-dir (default: data; add --download to fetch it with torchvision),
  # ResNet-18, IDAA with the shipped VAE, on a GPU
  idaa-train --epochs 200 --amp --out runs/simclr-idaa
  # the same without IDAA (the baseline)
  idaa-train --epochs 200 --amp --no-idaa --out runs/simclr
  # offline, a few minutes on a 2-core CPU
  idaa-train --dataset photos --arch small_cnn --epochs 15 --out runs/quickstart
  # a quick run on a class-balanced subset of a big image folder
  idaa-train --dataset imagefolder --data-dir data/my-images --subset 5000 --arch small_cnn --out runs/subset
  # several GPUs
  torchrun --nproc_per_node=4 -m idaa_transforms.trainers --batch-size 512 --amp --out runs/simclr-4gpu

outputs in --out: metrics.jsonl (per epoch), idaa_grid.png (x, G(x), R(x), x_adv, |x_adv - x|),
checkpoint.pt (every --save-every epochs; continue with --resume), results.json (kNN and linear accuracy).
A fresh run into a folder that holds a run is refused: pass --resume to continue it or --overwrite to replace it."""


def build_parser(method: str = "simclr", prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``method`` is the default of ``--method``."""
    parser = ArgumentParser(
        prog=prog, epilog=_EPILOG,
        description="Self-supervised training (SimCLR or BYOL) with and without IDAA, identity-disentangled "
                    "adversarial augmentation (Yang et al., ICML 2022). Views are made on the device (the kornia SimCLR pipeline's operations, fused into a few batched ops).")
    add_train_arguments(parser, defaults={"method": method, "out": None},
                        helps={"out": "output folder (default: runs/<method>[-idaa])"})
    return parser


def parse_args(argv: Sequence[str] | None = None, method: str = "simclr") -> TrainConfig:
    """Parse a command line into a :class:`TrainConfig` (invalid values raise ``SystemExit`` with a message)."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.method}{'-idaa' if args.idaa else ''}"
    try:
        return config_from_args(args)
    except ValueError as err:
        parser.error(str(err))


def main(argv: Sequence[str] | None = None, method: str = "simclr") -> int:
    """Parse the command line and train; returns the exit status for ``sys.exit(main())``: 0 when the run finished,
    3 when it stopped cleanly before its last epoch (``--max-minutes``, ``--stop-after``; ``--resume`` continues).

    A problem with the settings, the data or the output folder ends the program with a one-line error (status 2),
    Ctrl-C with one line that says how to continue (status 130).
    """
    from idaa_transforms.trainers.engine import train

    cfg = parse_args(argv, method)
    try:
        result = train(cfg)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        prog = build_parser(method).prog
        print(f"{prog}: error: {named_by_flags(str(err), TRAIN_FIELDS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted(build_parser(method).prog, cfg.out), end="", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0 if result.finished else UNFINISHED_STATUS
