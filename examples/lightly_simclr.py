"""IDAA inside lightly's own SimCLR recipe: lightly's SimCLRTransform, projection head and NTXentLoss.

The loop is lightly's SimCLR example with three changes (marked ``# IDAA``): the transform is built on the model with
lightly's ImageNet normalisation, each step makes a hard view of the first view, and the loss adds
``alpha * NTXent(z0, model(x_adv))``.

    pip install lightly
    python examples/lightly_simclr.py --data-dir path/to/images --epochs 10     # any folder of images
    python examples/lightly_simclr.py --fake 64 --epochs 1 --batch-size 32      # generated images, no data needed
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torchvision
from lightly.data import LightlyDataset
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from idaa_transforms import IDAATransform
from idaa_transforms._cli import HelpFormatter, non_negative_float, non_negative_int, positive_float, positive_int


class SimCLR(nn.Module):
    """lightly's SimCLR model: a backbone and its projection head; ``model(x)`` is the embedding NT-Xent compares."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def resnet18_backbone() -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 without its classifier, as in lightly's examples."""
    resnet = torchvision.models.resnet18()
    return nn.Sequential(*list(resnet.children())[:-1]), 512


class FakeImages(Dataset):
    """``count`` generated RGB images (smooth random colour fields), each passed through ``transform``."""

    def __init__(self, count: int, size: int = 32, transform=None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        coarse = rng.random((count, 4, 4, 3))
        self.images = [Image.fromarray((c * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
                       for c in coarse]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), 0


def train(dataset: Dataset, model: SimCLR, *, epochs: int = 1, batch_size: int = 32, lr: float = 0.06,
          eps: float = 0.1, alpha: float = 1.0, workers: int = 0) -> list[float]:
    """lightly's SimCLR loop plus IDAA; returns the loss of every step."""
    dataloader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    idaa = IDAATransform.from_pretrained(encoder=model, eps=eps, **IMAGENET_NORMALIZE)  # IDAA: mean=, std=
    losses = []
    for _ in range(epochs):
        for batch in dataloader:
            x0, x1 = batch[0]
            z0 = model(x0)
            z1 = model(x1)
            x_adv = idaa(x0, anchor=z0.detach())  # IDAA: a harder view of x0; model, grads and BN stats untouched
            loss = criterion(z0, z1) + alpha * criterion(z0, model(x_adv))  # IDAA: the adversarial term
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a folder of images (any type PIL reads), read with lightly's dataset")
    source.add_argument("--fake", type=positive_int, metavar="N", help="train on N generated 32 px images")
    parser.add_argument("--input-size", type=positive_int, default=32, help="crop size of lightly's SimCLRTransform")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--lr", type=positive_float, default=0.06)
    parser.add_argument("--eps", type=non_negative_float, default=0.1, help="IDAA's latent step")
    parser.add_argument("--alpha", type=non_negative_float, default=1.0, help="weight of the adversarial term")
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    transform = SimCLRTransform(input_size=args.input_size)
    if args.data_dir is not None:
        dataset = LightlyDataset(input_dir=args.data_dir, transform=transform)
    else:
        dataset = FakeImages(args.fake, size=args.input_size, transform=transform, seed=args.seed)
    if len(dataset) < args.batch_size:
        parser.error(f"--batch-size {args.batch_size} is larger than the {len(dataset)} images: no full batch.")
    model = SimCLR(*resnet18_backbone())
    losses = train(dataset, model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
                   alpha=args.alpha, workers=args.workers)
    print(f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return losses


if __name__ == "__main__":
    main()
