"""Smoke tests of benchmarks/: workloads.py and bench.py run on tiny configurations (no timing assertions)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("kornia")
workloads = pytest.importorskip("workloads")
bench = pytest.importorskip("bench")


pytestmark = pytest.mark.usefixtures("single_thread")


def test_transform_suite_returns_finite_positive_timings_and_ratios() -> None:
    cfg = workloads.BenchConfig(vae="tiny", arch="small_cnn", image_size=32, batch_size=4, repeats=1, warmup=0)
    record = workloads.run_config(cfg)
    assert set(workloads.RATIO_KEYS) <= set(record["ratios"])
    for key in ("a_views", "b_idaa_anchor", "b_idaa_no_anchor", *workloads.PART_KEYS, "c_parts_sum",
                "d_pixel_fgsm", "e_step_plain", "e_step_idaa"):
        assert math.isfinite(record["ms"][key]) and record["ms"][key] > 0, key
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    assert "| b/c |" in bench.markdown_table([record])


def test_transform_workloads_use_the_trainers_encoder() -> None:
    import torch

    from idaa_transforms.trainers.models import build_encoder

    model = workloads.build_simclr("small_cnn")
    reference, _ = build_encoder("small_cnn")
    convs = [[m.weight.shape for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
             for net in (model.backbone, reference)]
    assert convs[0] == convs[1] and len(convs[0]) == 4


def test_trainer_suite_times_every_workload_and_epoch(tmp_path: Path) -> None:
    argv = ["--suite", "trainer", "--device", "cpu", "--arch", "small_cnn", "--vaes", "tiny", "--batch-sizes", "8",
            "--image-sizes", "32", "--repeats", "1", "--warmup", "0", "--epoch-images", "16",
            "--loader-workers", "1", "--out", str(tmp_path)]
    [record] = bench.main(argv)
    for key in workloads.TRAINER_KEYS:
        assert math.isfinite(record["ms"][key]) and record["ms"][key] > 0, key
    assert all(math.isfinite(v) and v > 0 for v in record["ratios"].values())
    epochs = record["epochs"]
    assert epochs["steps"] == 2
    for key in ("baseline", "idaa", "torchvision_v2_workers"):
        assert epochs[key]["seconds"] > 0 and epochs[key]["images_per_s"] > 0, key
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"][0]["label"] == record["label"]
    assert "| idaa_step/plain_step |" in (tmp_path / "results.md").read_text()


def test_torchvision_v2_views_keep_shape_and_dtype() -> None:
    import torch

    view = workloads.torchvision_v2_views(16)(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert view.shape == (3, 16, 16) and view.dtype == torch.uint8


def test_plan_covers_both_scaling_axes_and_variants() -> None:
    base = workloads.BenchConfig()
    plan = bench.plan_configs(base, ["paper", "shipped"], [64, 32], [32, 96], ["bf16"], ["transform"])
    labels = [c.label for c in plan]
    assert len(labels) == len(set(labels))
    assert {(c.batch_size, c.image_size) for c in plan if c.vae == "paper"} == {(64, 32), (32, 32), (64, 96)}
    assert any(c.amp == "bf16" for c in plan) and any(c.compile == "transform" for c in plan)


def test_vae_config_for_keeps_a_small_bottleneck() -> None:
    assert [workloads.vae_config_for(s).num_downsamplings for s in (32, 64, 96, 224)] == [2, 3, 4, 5]


def test_bad_options_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--suite", "training"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])
    for sizes in ("0", "32,-1", "a"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--batch-sizes", sizes])
    with pytest.raises(SystemExit):  # no abbreviations
        bench.parse_args(["--suit", "trainer"])
