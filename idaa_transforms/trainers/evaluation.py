"""Frozen-feature evaluation: a weighted kNN monitor and a logistic-regression linear probe.

Both take features that :func:`extract_features` computed with the backbone in eval mode and L2-normalised.

Example:
    >>> import torch
    >>> train = torch.nn.functional.normalize(torch.eye(4).repeat(5, 1), dim=1)
    >>> labels = torch.arange(4).repeat(5)
    >>> knn_accuracy(train, labels, train, labels, k=5)
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms.data import to_float_images

__all__ = ["extract_features", "knn_predict", "knn_accuracy", "linear_probe"]


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """L2-normalised features of ``images`` (``[0, 1]`` floats or uint8) with ``backbone`` in eval mode.

    The backbone's train/eval mode is restored afterwards. Features come back on the images' device.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            x = to_float_images(x).float()
            chunks.append(F.normalize(backbone(x).float().flatten(1), dim=1))
        return torch.cat(chunks).to(images.device)
    finally:
        backbone.train(was_training)


def _check(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor) -> None:
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"features: expected (N, D) train and (M, D) test features, got {tuple(train.shape)} "
                         f"and {tuple(test.shape)}.")
    if train_labels.shape != (train.shape[0],) or test_labels.shape != (test.shape[0],):
        raise ValueError(f"labels: expected one label per feature row, got {tuple(train_labels.shape)} for "
                         f"{train.shape[0]} train rows and {tuple(test_labels.shape)} for {test.shape[0]} test rows.")
    if train.shape[0] == 0 or test.shape[0] == 0:
        raise ValueError(f"features: expected non-empty sets, got {train.shape[0]} train and {test.shape[0]} test rows.")


@torch.no_grad()
def knn_predict(train: Tensor, train_labels: Tensor, test: Tensor, k: int = 200, temperature: float = 0.1,
                num_classes: int | None = None, chunk: int = 1024) -> Tensor:
    """Weighted kNN labels of ``test``: the ``k`` most cosine-similar train rows vote with ``exp(sim / temperature)``.

    This is the monitor of InstDisc (Wu et al., 2018) used by SimCLR CIFAR code. ``k`` is capped at the train size.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn: expected k >= 1 and temperature > 0, got k={k!r}, temperature={temperature!r}.")
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=test.device)


def knn_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Accuracy of :func:`knn_predict` on ``(test, test_labels)``, in [0, 1]."""
    _check(train, train_labels, test, test_labels)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train, train_labels.to(train.device), test.to(train.device), k, temperature, num_classes)
    return float((pred == test_labels.to(pred.device)).float().mean())


def linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, steps: int = 300,
                 weight_decay: float = 1e-4) -> float:
    """Test accuracy of a logistic regression fitted on frozen features with full-batch L-BFGS.

    The features are standardised with the train set's per-dimension mean and standard deviation (which only
    conditions the problem); the fit runs on the features' device and is deterministic.

    Args:
        train, train_labels, test, test_labels: ``(N, D)`` features (typically L2-normalised) and int labels.
        steps: L-BFGS iterations.
        weight_decay: L2 penalty on the weights (``0.5 * weight_decay * ||W||^2`` added to the mean cross-entropy).
    """
    _check(train, train_labels, test, test_labels)
    if steps < 1 or weight_decay < 0:
        raise ValueError(f"linear_probe: expected steps >= 1 and weight_decay >= 0, got {steps!r}, {weight_decay!r}.")
    device = train.device
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    x = ((train - mean) / std).float()
    y = train_labels.to(device)
    weight = torch.zeros(train.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = ((test.to(device) - mean) / std).float() @ weight + bias
        return float((logits.argmax(1) == test_labels.to(device)).float().mean())
