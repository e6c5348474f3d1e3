"""Smoke test of benchmarks/bench.py: its core functions run on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench")
pytest.importorskip("kornia")


def test_run_config_returns_finite_positive_timings_and_ratios() -> None:
    cfg = bench.BenchConfig(vae="tiny", arch="tiny_cnn", image_size=32, batch_size=4, repeats=1, warmup=0)
    record = bench.run_config(cfg)
    assert set(bench.RATIO_KEYS) <= set(record["ratios"])
    for key in ("a_views", "b_idaa_anchor", "b_idaa_no_anchor", *bench.PART_KEYS, "c_parts_sum",
                "d_pixel_fgsm", "e_step_plain", "e_step_idaa"):
        assert math.isfinite(record["ms"][key]) and record["ms"][key] > 0, key
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    assert "| b/c |" in bench.markdown_table([record])


def test_plan_covers_both_scaling_axes_and_variants() -> None:
    base = bench.BenchConfig()
    plan = bench.plan_configs(base, ["paper", "shipped"], [64, 32], [32, 96], ["bf16"], ["transform"])
    labels = [c.label for c in plan]
    assert len(labels) == len(set(labels))
    assert {(c.batch_size, c.image_size) for c in plan if c.vae == "paper"} == {(64, 32), (32, 32), (64, 96)}
    assert any(c.amp == "bf16" for c in plan) and any(c.compile == "transform" for c in plan)


def test_vae_config_for_keeps_a_small_bottleneck() -> None:
    assert [bench.vae_config_for(s).num_downsamplings for s in (32, 64, 96, 224)] == [2, 3, 4, 5]
