"""kNN monitor and linear probe on synthetic features whose right answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from idaa_transforms.trainers.evaluation import extract_features, knn_accuracy, knn_predict, linear_probe


def clusters(n_per_class: int, classes: int = 5, dim: int = 32, spread: float = 0.3, seed: int = 0):
    """Gaussian clusters around random unit centres, L2-normalised, with their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=g)
    return F.normalize(feats, dim=1), labels


@pytest.fixture(scope="module")
def separated():
    train, train_y = clusters(100, seed=0)
    test, test_y = clusters(60, seed=0)  # same centres (same seed), fresh noise below
    g = torch.Generator().manual_seed(1)
    test = F.normalize(test * 3 + 0.3 * torch.randn(test.shape, generator=g), dim=1)
    return train, train_y, test, test_y


def test_knn_separated_clusters_is_perfect(separated):
    assert knn_accuracy(*separated, k=200) >= 0.99


def test_linear_probe_separated_clusters_is_perfect(separated):
    assert linear_probe(*separated, steps=100) >= 0.99


def random_label_task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(3000, 16, generator=g), dim=1)
    labels = torch.randint(0, 4, (3000,), generator=g)
    return feats[:1000], labels[:1000], feats[1000:], labels[1000:]


def test_random_labels_give_chance():
    task = random_label_task()
    # 4 classes: chance is 0.25; 2000 test points put 3 standard deviations at about +-0.03.
    assert 0.20 < knn_accuracy(*task) < 0.30
    assert 0.20 < linear_probe(*task, steps=100) < 0.30


def test_knn_votes_are_weighted_by_exp_similarity():
    # Two very close class-0 neighbours beat three distant class-1 neighbours with exp(sim / 0.1) weights,
    # while a plain majority vote would say class 1.
    q = torch.tensor([[1.0, 0.0]])
    angle = torch.tensor([0.05, 0.06, 1.2, 1.25, 1.3])
    train = torch.stack([angle.cos(), angle.sin()], 1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert knn_predict(train, labels, q, k=5, temperature=0.1).tolist() == [0]
    assert knn_predict(train, labels, q, k=5, temperature=100.0).tolist() == [1]
    # k is capped at the train size, and k=1 is the nearest neighbour.
    assert knn_predict(train, labels, q, k=200).tolist() == [0]
    assert knn_predict(train, labels, -q, k=1).tolist() == [1]


def test_bad_arguments_raise():
    train, labels = clusters(4)
    with pytest.raises(ValueError, match="one label per feature row"):
        knn_accuracy(train, labels[:-1], train, labels)
    with pytest.raises(ValueError, match="features"):
        linear_probe(train, labels, train[:, :3], labels)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(train, labels, train, k=0)


def test_extract_features_normalised_and_mode_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()).train()
    images = (torch.rand(10, 3, 8, 8) * 255).to(torch.uint8)
    before = net[1].running_mean.clone()
    feats = extract_features(net, images, batch_size=4)
    assert feats.shape == (10, 4)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    assert net.training and torch.equal(net[1].running_mean, before)  # eval mode inside: no statistics update
    expected = F.normalize(net.eval()(images.float() / 255), dim=1)
    torch.testing.assert_close(feats, expected)
