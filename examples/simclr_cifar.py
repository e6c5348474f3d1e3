"""SimCLR on CIFAR-10 (or the offline photos), with IDAA by default and ``--no-idaa`` for the baseline.

    python examples/simclr_cifar.py --help
    python examples/simclr_cifar.py --dataset photos --arch small_cnn --epochs 15 --out runs/quickstart
    torchrun --nproc_per_node=2 examples/simclr_cifar.py --amp --out runs/simclr-2gpu
"""

import sys

from idaa_transforms.trainers.cli import main

if __name__ == "__main__":
    sys.exit(main(method="simclr"))
