"""BYOL on CIFAR-10 (or the offline photos), with IDAA by default and ``--no-idaa`` for the baseline.

    python examples/byol_cifar.py --help
    python examples/byol_cifar.py --dataset photos --arch small_cnn --epochs 15 --out runs/byol-quickstart
"""

import sys

from idaa_transforms.trainers.cli import main

if __name__ == "__main__":
    sys.exit(main(method="byol"))
