"""The comparison harness: equal-time epochs and report wording on known numbers, then a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from idaa_transforms.data import EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS
from idaa_transforms.experiments import compare
from idaa_transforms.experiments.compare import check_no_leak, describe_difference, equal_time_epochs
from idaa_transforms.experiments.stats import paired_comparison
from idaa_transforms.trainers import TrainConfig, parse_args, train


# -- equal wall-clock time ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs, base, variant, expected", [
    (10, 1.0, 2.0, 5),     # IDAA at twice the cost: half the epochs
    (10, 1.0, 3.0, 3),     # 3.33 rounds down
    (10, 1.0, 1.5, 7),     # 6.67 rounds up
    (6, 7.0, 28.0, 2),     # 1.5 rounds to the even 2 (Python's round)
    (3, 1.0, 100.0, 1),    # never below one epoch
    (5, 2.0, 2.0, 5),      # same cost: same epochs
    (4, 2.0, 1.0, 8),      # a cheaper variant gets more epochs
])
def test_equal_time_epochs(epochs, base, variant, expected):
    assert equal_time_epochs(epochs, base, variant) == expected


@pytest.mark.parametrize("args", [(0, 1.0, 1.0), (True, 1.0, 1.0), (2.5, 1.0, 1.0), (3, 0.0, 1.0), (3, 1.0, -1.0),
                                  (3, 1.0, float("nan")), (3, float("inf"), 1.0)])
def test_equal_time_epochs_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        equal_time_epochs(*args)


# -- report wording -----------------------------------------------------------------------------------------------
def test_difference_smaller_than_its_std_is_noise():
    c = paired_comparison([71.0, 69.0, 72.0], [70.0, 70.0, 70.0])  # +1, -1, +2: mean 0.67, std 1.53
    text = describe_difference("IDAA - baseline", "kNN", c)
    assert text.endswith("not distinguishable from seed noise.")
    assert "+0.67 ± 1.53 points over 3 seeds" in text


def test_difference_with_large_p_value_is_noise_even_if_larger_than_std():
    c = paired_comparison([72.0, 70.5], [70.0, 70.0])  # +2, +0.5: mean 1.25 > std 1.06, but t p = 0.39
    assert c.t_p_value > 0.05 and abs(c.summary.mean) > c.summary.std
    assert "not distinguishable from seed noise" in describe_difference("x", "kNN", c)


def test_consistent_difference_is_reported_with_the_sign_flip_floor():
    c = paired_comparison([75.0, 76.0, 75.5], [70.0, 71.0, 70.4])  # +5, +5, +5.1: t p < 0.001
    text = describe_difference("IDAA - baseline", "linear", c)
    assert "higher, beyond the seed-to-seed spread" in text
    assert "cannot confirm it with 3 seeds" in text and "0.250" in text  # 2 / 2**3
    worse = describe_difference("IDAA - baseline", "linear", paired_comparison([70.0, 71.0, 70.4], [75.0, 76.0, 75.5]))
    assert "lower, beyond" in worse


def test_consistent_difference_with_enough_seeds_passes_both_tests():
    diffs = [3.0, 3.2, 2.9, 3.1, 3.0, 2.8]
    c = paired_comparison([70 + d for d in diffs], [70.0] * 6)
    assert c.sign_flip_p_value == pytest.approx(2 / 64)
    assert describe_difference("a", "kNN", c).endswith("and the exact sign-flip test agrees.")


def test_single_seed_is_not_evidence():
    text = describe_difference("a", "kNN", paired_comparison([75.0], [70.0]))
    assert "single seed" in text and "not evidence" in text


def test_no_leak_names_the_photographs():
    assert not set(EVAL_PHOTOS) & set(VAE_PHOTOS + GRAY_PHOTOS)
    text = check_no_leak("photos", None)
    assert all(name in text for name in EVAL_PHOTOS + VAE_PHOTOS) and "disjoint (checked)" in text
    assert "not checked" in check_no_leak("photos", "some/vae")


def test_no_leak_refuses_overlapping_photographs(monkeypatch):
    monkeypatch.setattr(compare, "VAE_PHOTOS", VAE_PHOTOS + (EVAL_PHOTOS[0],))
    with pytest.raises(RuntimeError, match="leak"):
        check_no_leak("photos", None)


def test_variant_configs(tmp_path):
    base = TrainConfig(dataset="photos", arch="small_cnn", eps=0.1)
    configs = {v: compare.variant_config(base, v, 3, 2, 0.01, tmp_path) for v in compare.VARIANTS}
    assert not configs["baseline"].idaa
    assert configs["idaa"].idaa and configs["idaa"].eps == 0.1 and configs["idaa"].adversary == "idaa"
    assert configs["eps0"].idaa and configs["eps0"].eps == 0.0 and configs["eps0"].adversary == "idaa"
    assert configs["pixel_fgsm"].adversary == "pixel_fgsm" and configs["pixel_fgsm"].pixel_eps == 0.01
    assert all(c.seed == 3 and c.epochs == 2 for c in configs.values())
    assert configs["eps0"].out == str(tmp_path / "eps0-e2-s3")
    with pytest.raises(ValueError, match="variant"):
        compare.variant_config(base, "cutout", 0, 1, None, tmp_path)


def test_trainer_cli_and_config_take_the_pixel_adversary():
    cfg = parse_args(["--adversary", "pixel_fgsm", "--pixel-eps", "0.02"])
    assert cfg.adversary == "pixel_fgsm" and cfg.pixel_eps == 0.02
    with pytest.raises(ValueError, match="adversary"):
        TrainConfig(adversary="pgd")
    with pytest.raises(ValueError, match="pixel_eps"):
        TrainConfig(pixel_eps=-0.1)


def test_pixel_fgsm_training_run_writes_a_three_row_grid(tmp_path):
    from PIL import Image

    train(TrainConfig(dataset="photos", crops_per_photo=16, arch="small_cnn", epochs=1, batch_size=32, knn_k=10,
                      probe_steps=5, adversary="pixel_fgsm", pixel_eps=0.02, out=str(tmp_path), no_progress=True,
                      device="cpu"))
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["loss_adv"] is not None
    assert Image.open(tmp_path / "idaa_grid.png").size == (8 * 98 + 2, 3 * 98 + 2)  # x, x_adv, |x_adv - x|, 32 px shown at 96


# -- end to end ---------------------------------------------------------------------------------------------------
def test_compare_end_to_end(tmp_path):
    argv = ["--seeds", "0", "1", "--epochs", "1", "--crops-per-photo", "8", "--batch-size", "32",
            "--arch", "small_cnn", "--probe-steps", "10", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--report-dir", str(tmp_path / "report")]
    data = compare.main(argv)
    report = (tmp_path / "report" / "report.md").read_text()
    for name in ("report.md", "compare.json", "knn_curves.png", "views_grid.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert set(data["equal_epochs"]["variants"]) == set(compare.VARIANTS)
    assert data["equal_time_plan"] == {"idaa": 1, "eps0": 1, "pixel_fgsm": 1}  # never below one epoch
    assert 0 < data["calibration"]["pixel_eps"] < 0.5 and data["calibration"]["eps0_l2"] < 1e-3
    assert data["calibration"]["fgsm_l2"] == pytest.approx(data["calibration"]["idaa_l2"], rel=1e-3)
    paired = {(p["variant"], p["against"], p["metric"]) for p in data["equal_epochs"]["paired"]}
    assert ("idaa", "baseline", "knn_acc") in paired and ("idaa", "eps0", "linear_acc") in paired
    assert len(data["runs"]) == 8 and not data["missing"]
    for text in ("paired t p", "sign-flip p", "s / epoch", "Equal wall-clock time", "pixel FGSM eps =",
                 "What this does and does not show", "disjoint (checked)", "--seeds 0 1", "machine:", "date:"):
        assert text in report, text
    assert "cannot reach p < 0.05" in report  # 2 seeds: the sign-flip floor is 0.5
    # A second call reads the finished runs instead of training again.
    again = compare.main(argv)
    assert all(r["wall_seconds"] is None for r in again["runs"])  # None: read back, not trained

    def stable(runs):
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in runs]

    assert stable(again["runs"]) == stable(data["runs"])
    # The matched pixel eps depends on the settings: a saved calibration made with others is refused, not reused.
    with pytest.raises(ValueError, match="calibration.json was made with other settings"):
        compare.main([*argv, "--eps", "0.2"])


def test_pixel_fgsm_loss_without_gradient_path_is_a_clear_error():
    from idaa_transforms.pixel_fgsm import PixelFGSM

    fgsm = PixelFGSM(loss_fn=lambda x, x_adv: x_adv.detach().sum(), eps=0.01)
    with pytest.raises(ValueError, match="no gradient path to x_adv"):
        fgsm(torch.rand(2, 3, 8, 8))
