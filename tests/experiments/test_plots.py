"""The comparison's pictures are written from typed runs, atomically, with any subset of variants."""

from __future__ import annotations

import torch
from PIL import Image

from idaa_transforms.experiments.plots import write_knn_plot, write_views_grid
from idaa_transforms.experiments.schedule import CurvePoint, RunRecord


def test_knn_plot_from_records(tmp_path):
    runs = [RunRecord("baseline", s, 3, f"b{s}", 70.0, 80.0, 1.0, None,
                      [CurvePoint(e, 60.0 + e + s, float(e)) for e in (1, 2, 3)]) for s in range(2)]
    write_knn_plot({"baseline": runs, "idaa": []}, {}, tmp_path / "knn.png", 3)
    alone = Image.open(tmp_path / "knn.png").size[0]
    assert alone > 500
    assert [p.name for p in tmp_path.iterdir()] == ["knn.png"]
    write_knn_plot({"baseline": runs}, {"baseline": runs}, tmp_path / "knn.png", 3)  # with equal time: two panels
    assert Image.open(tmp_path / "knn.png").size[0] > 1.5 * alone


def test_views_grid_has_seven_labelled_rows(tmp_path):
    x = torch.rand(4, 3, 32, 32)
    rows = {"x": x, "reconstruction": x * 0.8, "residual": x * 0.2, "idaa": x + 0.01, "fgsm": x - 0.01}
    write_views_grid(rows, tmp_path / "views.png", pixel_eps=0.01)
    picture = Image.open(tmp_path / "views.png")
    assert picture.height == 18 + 7 * 98 + 2  # title line + 7 rows of 32 px shown at 96


def test_views_grid_without_the_pixel_fgsm_has_five_rows(tmp_path):
    x = torch.rand(4, 3, 32, 32)
    rows = {"x": x, "reconstruction": x * 0.8, "residual": x * 0.2, "idaa": x + 0.01}  # no FGSM row asked for
    write_views_grid(rows, tmp_path / "views.png", pixel_eps=0.01, with_fgsm=False)
    assert Image.open(tmp_path / "views.png").height == 18 + 5 * 98 + 2
