"""The matched pixel budget: FGSM's mean L2 equals IDAA's, the eps = 0 control barely moves, the rows are right."""

from __future__ import annotations

import pytest

from helpers import TINY_RUN
from idaa_transforms.experiments.calibration import Calibration, calibrate
from idaa_transforms.trainers.config import TrainConfig


def test_calibration_matches_the_pixel_budget(tiny_vae_dir):
    record, rows = calibrate(TrainConfig(**TINY_RUN, vae=tiny_vae_dir), n_images=32)
    assert record.images == 32 and 0 < record.pixel_eps < 0.5
    assert record.fgsm_l2 == pytest.approx(record.idaa_l2, rel=1e-3) and record.eps0_l2 < 1e-3
    assert record.fgsm_linf == pytest.approx(record.pixel_eps, rel=1e-4)
    assert set(rows) == {"x", "reconstruction", "residual", "idaa", "fgsm"}
    assert all(v.shape == (8, 3, 32, 32) for v in rows.values())
    assert Calibration.from_dict({**record.to_dict(), "unknown": 1}) == record
