"""Sanity anchors: the published figures and a randomly initialised network's kNN accuracy."""

from __future__ import annotations

from helpers import TINY_RUN
from idaa_transforms.experiments.anchors import published_anchors, random_init_knn
from idaa_transforms.trainers.config import TrainConfig


def test_published_figures_are_the_cited_ones():
    figures = {(a.source, a.metric): (a.accuracy, a.epochs, a.batch_size) for a in published_anchors("cifar10")}
    assert figures == {("lightly benchmark", "kNN"): (84.7, 200, 512), ("solo-learn", "linear"): (90.7, 1000, None)}
    assert published_anchors("cifar100") == [] and published_anchors("photos") == []


def test_random_init_knn_is_an_accuracy_and_deterministic():
    cfg = TrainConfig(**TINY_RUN)
    first = random_init_knn(cfg)
    assert 0 <= first <= 100 and random_init_knn(cfg) == first
