"""nt_xent and negative_cosine against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch

from idaa_transforms import negative_cosine, nt_xent

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_nt_xent(a: list[list[float]], b: list[list[float]], temperature: float) -> float:
    """SimCLR's NT-Xent written out with loops over plain Python lists."""

    def unit(v):
        n = math.sqrt(sum(c * c for c in v))
        return [c / n for c in v]

    views = [unit(v) for v in a] + [unit(v) for v in b]
    n = len(a)
    total = 0.0
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)
        sims = {k: sum(p * q for p, q in zip(anchor, other)) / temperature for k, other in enumerate(views) if k != i}
        denominator = sum(math.exp(s) for s in sims.values())
        total += -math.log(math.exp(sims[partner]) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0])
def test_nt_xent_matches_reference(temperature):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    expected = reference_nt_xent(a.tolist(), b.tolist(), temperature)
    assert float(nt_xent(a, b, temperature)) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_default_temperature_is_half():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert float(nt_xent(a, b)) == pytest.approx(reference_nt_xent(a.tolist(), b.tolist(), 0.5), rel=1e-5)


def test_nt_xent_is_scale_invariant_and_symmetric():
    a, b = torch.randn(5, 6), torch.randn(5, 6)
    torch.testing.assert_close(nt_xent(a * 3, b * 0.2), nt_xent(a, b))
    torch.testing.assert_close(nt_xent(b, a), nt_xent(a, b))


def test_nt_xent_identical_views_smaller_than_shuffled():
    a = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    assert nt_xent(a, a) < nt_xent(a, a[[1, 2, 3, 4, 5, 0]])
    assert nt_xent(a, a + 0.01 * torch.randn(6, 8)) < nt_xent(a, torch.randn(6, 8))


def test_nt_xent_single_pair_is_zero():
    assert float(nt_xent(torch.randn(1, 4), torch.randn(1, 4))) == 0.0


def test_nt_xent_gradient():
    a = torch.randn(4, 3)
    b = torch.randn(4, 3, requires_grad=True)
    nt_xent(a, b).backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_negative_cosine_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, -1.0]])
    assert float(negative_cosine(a, b)) == pytest.approx(0.0)  # -(1 + (-1)) / 2
    assert float(negative_cosine(a, a)) == pytest.approx(-1.0)
    assert float(negative_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))) == pytest.approx(
        -1 / math.sqrt(2)
    )
    assert float(negative_cosine(a, -a)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("a", "b"),
    [((3, 4), (3, 5)), ((3, 4), (2, 4)), ((2, 3, 4), (2, 3, 4)), ((4,), (4,))],
)
def test_nt_xent_shape_errors(a, b):
    with pytest.raises(ValueError, match=r"nt_xent: expected two \(B, D\) tensors of one shape"):
        nt_xent(torch.randn(a), torch.randn(b))


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_nt_xent_temperature_error(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), temperature)


def test_negative_cosine_shape_error():
    with pytest.raises(ValueError, match="negative_cosine: expected tensors of one shape"):
        negative_cosine(torch.randn(3, 4), torch.randn(3, 5))
