"""Sanity anchors for the baseline: published SimCLR ResNet-18 CIFAR-10 figures and a randomly initialised network.

A baseline far below the published figures at a matched budget, or barely above a random network, points to a
trainer bug to find before any comparison is quoted.

Example:
    >>> [a.source for a in published_anchors("cifar10")]
    ['lightly benchmark', 'solo-learn']
    >>> published_anchors("photos")
    []
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from idaa_transforms.trainers.config import TrainConfig
from idaa_transforms.trainers.engine import build_model, load_split
from idaa_transforms.trainers.evaluation import extract_features, knn_accuracy

__all__ = ["PublishedAnchor", "PUBLISHED", "published_anchors", "random_init_knn"]


@dataclass(frozen=True)
class PublishedAnchor:
    """A published accuracy (%) of SimCLR with a ResNet-18 on a dataset, with its budget."""

    dataset: str
    metric: str
    accuracy: float
    epochs: int
    batch_size: int | None
    source: str
    url: str


PUBLISHED = (
    PublishedAnchor("cifar10", "kNN", 84.7, 200, 512, "lightly benchmark",
                    "https://docs.lightly.ai/self-supervised-learning/getting_started/benchmarks.html"),
    PublishedAnchor("cifar10", "linear", 90.7, 1000, None, "solo-learn",
                    "https://github.com/vturrisi/solo-learn"),
)


def published_anchors(dataset: str) -> list[PublishedAnchor]:
    """The published figures for ``dataset`` (SimCLR, ResNet-18); none for datasets without any here."""
    return [a for a in PUBLISHED if a.dataset == dataset]


@torch.no_grad()
def random_init_knn(base: TrainConfig, seed: int = 0) -> float:
    """kNN accuracy (%) of a randomly initialised ``base.arch`` on ``base``'s data, with ``base``'s kNN settings."""
    device = torch.device(base.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_x, train_y = load_split(base, train=True)
    test_x, test_y = load_split(base, train=False)
    torch.manual_seed(seed)
    backbone = build_model(dataclasses.replace(base, idaa=False)).backbone.to(device)
    train_f = extract_features(backbone, train_x.to(device))
    test_f = extract_features(backbone, test_x.to(device))
    return 100 * knn_accuracy(train_f, train_y.to(device), test_f, test_y.to(device), base.knn_k, base.knn_temperature)
