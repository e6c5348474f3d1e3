"""The one drawing function for rows of images (x, G(x), R(x), x_adv...)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from idaa_transforms._grids import decomposition_rows, save_image_rows


def test_rows_are_enlarged_labelled_and_written_atomically(tmp_path):
    x = torch.rand(3, 3, 16, 16)
    save_image_rows(decomposition_rows(x, x * 0.5, x * 0.5, x_adv=x.flip(0)), tmp_path / "g.png")
    picture = Image.open(tmp_path / "g.png")
    assert picture.height == 5 * (96 + 2) + 2 and picture.width > 3 * 98
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
    save_image_rows([("x", x)], tmp_path / "plain.png", labels=False)
    assert Image.open(tmp_path / "plain.png").size == (3 * 98 + 2, 98 + 2)


def test_rows_without_decomposition_and_greyscale():
    x = torch.rand(2, 1, 32, 32)
    assert [label for label, _ in decomposition_rows(x, x_adv=x, name="FGSM")] == ["x", "FGSM", "|FGSM - x|"]


def test_bad_rows_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        save_image_rows([], tmp_path / "g.png")
    with pytest.raises(ValueError, match="same \\(B, H, W\\)"):
        save_image_rows([("a", torch.rand(2, 3, 8, 8)), ("b", torch.rand(3, 3, 8, 8))], tmp_path / "g.png")
