"""The report: paired differences in words, the data sentence, anchors and the tables, on known numbers."""

from __future__ import annotations

import json

import pytest

from idaa_transforms.data import EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS
from idaa_transforms.experiments import report
from idaa_transforms.experiments.anchors import published_anchors
from idaa_transforms.experiments.calibration import Calibration
from idaa_transforms.experiments.report import Anchors, ReportContext, build_report, check_no_leak, describe_difference
from idaa_transforms.experiments.schedule import CurvePoint, RunRecord
from idaa_transforms.experiments.stats import paired_comparison
from idaa_transforms.trainers.config import TrainConfig


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


def test_identical_differences_are_not_called_beyond_the_spread():
    two = describe_difference("a", "kNN", paired_comparison([71.0, 72.0], [70.0, 71.0]))  # +1, +1: no spread
    assert "no paired t-test" in two and "beyond the seed-to-seed spread" not in two
    assert two.endswith("not distinguishable from seed noise.")  # sign-flip p = 0.5 with 2 seeds
    six = describe_difference("a", "kNN", paired_comparison([71.0] * 6, [70.0] * 6))  # sign-flip p = 2 / 64
    assert "higher in every seed, beyond chance by the exact sign-flip test" in six


def test_single_seed_is_not_evidence():
    text = describe_difference("a", "kNN", paired_comparison([75.0], [70.0]))
    assert "single seed" in text and "not evidence" in text


def test_no_leak_names_the_photographs():
    assert not set(EVAL_PHOTOS) & set(VAE_PHOTOS + GRAY_PHOTOS)
    text = check_no_leak("photos", None)
    assert all(name in text for name in EVAL_PHOTOS) and "CIFAR-10 training split only" in text
    assert "evaluation on its test split" in check_no_leak("cifar10", None)
    assert "not checked" in check_no_leak("photos", "some/vae")


def test_no_leak_refuses_overlapping_photographs(monkeypatch):
    monkeypatch.setattr(report, "VAE_PHOTOS", VAE_PHOTOS + (EVAL_PHOTOS[0],))
    with pytest.raises(RuntimeError, match="leak"):
        check_no_leak("photos", None)


def record(variant: str, seed: int, knn: float, linear: float, epochs: int = 2) -> RunRecord:
    curve = [CurvePoint(e, knn - (epochs - e), 1.5 * e) for e in range(1, epochs + 1)]
    return RunRecord(variant, seed, epochs, f"runs/{variant}-e{epochs}-s{seed}", knn, linear, 1.5, None, curve)


CALIBRATION = Calibration(pixel_eps=0.02, images=64, seed=0, eps=0.1, idaa_l2=1.2, eps0_l2=1e-4, fgsm_l2=1.2,
                          idaa_linf=0.2, fgsm_linf=0.02, settings={})
CONTEXT = ReportContext(command="python -m idaa_transforms.experiments.compare --seeds 0 1 2", date="today",
                        machine="a test", data="tiny data")


def test_report_tables_anchors_and_left_over_runs():
    runs = {"baseline": [record("baseline", s, 80.0 + s, 85.0) for s in range(3)],
            "idaa": [record("idaa", s, 81.0 + s, 86.0) for s in range(2)]}
    base = TrainConfig(dataset="cifar10", arch="resnet18", subset=2000)
    text, data = build_report(equal_epochs=runs, equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                              calibration=CALIBRATION, base=base, context=CONTEXT,
                              anchors=Anchors(41.5, published_anchors("cifar10")),
                              not_started=["idaa-e2-s2"], unfinished=["eps0-e2-s0 (1 of 2 epochs)"])
    assert "| baseline (two views) | 2 | 3 | 81.0 ± 1.0 | 85.0 ± 0.0 |" in text
    assert "| IDAA | 2 | 2 | 81.5 ± 0.7 |" in text  # two seeds: the row says so
    assert "IDAA - baseline (two views), kNN: +1.00 points in each of 2 seeds" in text
    assert "randomly initialised resnet18, same data, no training | 0 | 41.5 |" in text
    assert "lightly benchmark" in text and "| 200 | 84.7 | - |" in text and "| 1000 | - | 90.7 |" in text
    assert "Class-balanced subsets (fixed, seed 0) of 2000 training and at most 2000 test images." in text
    assert "eps0-e2-s0 (1 of 2 epochs), idaa-e2-s2 (not started)" in text and "--resume" in text
    assert data["anchors"]["random_init_knn"] == 41.5 and len(data["runs"]) == 5
    assert data["not_started"] == ["idaa-e2-s2"]


def test_report_without_anchors_on_photos_has_no_anchor_table():
    runs = {"baseline": [record("baseline", s, 70.0, 80.0) for s in range(2)]}
    text, _ = build_report(equal_epochs=runs, equal_time=None, plan=None, epochs=2, seeds=[0, 1],
                           calibration=CALIBRATION, base=TrainConfig(dataset="photos"), context=CONTEXT)
    assert "Sanity anchors" not in text and "No paired comparison is available yet" in text


def _two_variant_runs(epochs: int = 2) -> dict[str, list[RunRecord]]:
    return {"baseline": [record("baseline", s, 80.0 + s, 85.0, epochs) for s in range(3)],
            "idaa": [record("idaa", s, 81.5 + s, 86.0 + s, epochs) for s in range(3)],
            "eps0": [record("eps0", s, 80.5 + s, 85.0 + s, epochs) for s in range(3)]}


def test_equal_time_equal_to_equal_epochs_is_not_repeated_or_counted_twice():
    runs = _two_variant_runs()
    text, data = build_report(equal_epochs=runs, equal_time=runs, plan={"idaa": 2, "eps0": 2}, epochs=2,
                              seeds=[0, 1, 2], calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "Every variant's E' is 2: the equal-time runs are the equal-epoch runs" in text
    assert "### Equal wall-clock time" not in text and "At equal wall-clock time" not in text
    assert "of 6 paired differences" in text  # 3 pairs x 2 metrics, once
    assert "equal_time" not in data


def test_equal_time_leaves_out_the_pairs_whose_runs_are_the_equal_epoch_runs():
    runs = _two_variant_runs()
    shorter = [record("idaa", s, 80.0 + s, 85.5, epochs=1) for s in range(3)]
    text, data = build_report(equal_epochs=runs, equal_time={**runs, "idaa": shorter}, plan={"idaa": 1, "eps0": 2},
                              epochs=2, seeds=[0, 1, 2], calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "### Equal wall-clock time" in text and "not repeated here" in text
    pairs = {(p["variant"], p["against"]) for p in data["equal_time"]["paired"]}
    assert pairs == {("idaa", "baseline"), ("idaa", "eps0")}  # eps0 - baseline is the equal-epoch pair
    assert "of 10 paired differences" in text  # 6 at equal epochs + 4 at equal time


def test_report_names_the_pixel_fgsm_only_when_it_was_asked_for():
    runs = _two_variant_runs()
    text, _ = build_report(equal_epochs=runs, equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                           calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "FGSM" not in text and "mean L2 norm per image of IDAA's perturbation 1.2000" in text
    assert "IDAA minus eps = 0 is the effect of the latent attack" in text
    with_fgsm = {**runs, "pixel_fgsm": [record("pixel_fgsm", s, 80.0, 85.0) for s in range(3)]}
    text, _ = build_report(equal_epochs=with_fgsm, equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                           calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "pixel FGSM eps = 0.02000" in text and "The pixel FGSM budget matches" in text
    alone, data = build_report(equal_epochs={"baseline": runs["baseline"]}, equal_time=None, plan=None, epochs=2,
                               seeds=[0, 1, 2], calibration=None, base=TrainConfig(), context=CONTEXT)
    assert "FGSM" not in alone and "views_grid" not in alone and data["calibration"] is None


def test_equal_time_epochs_split_by_rounding_are_flagged():
    runs = _two_variant_runs()
    runs["eps0"] = [RunRecord("eps0", r.seed, 2, r.folder, r.knn_acc, r.linear_acc, 1.55, None,
                              [CurvePoint(p.epoch, p.knn_acc, 1.55 * p.epoch) for p in r.curve]) for r in runs["eps0"]]
    shorter = {v: [record(v, s, 80.0 + s, 85.0, epochs=e) for s in range(3)] for v, e in (("idaa", 1), ("eps0", 2))}
    text, _ = build_report(equal_epochs=runs, equal_time={**runs, **shorter}, plan={"idaa": 1, "eps0": 2}, epochs=2,
                           seeds=[0, 1, 2], calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "IDAA and eps = 0 control cost the same per epoch within 5% (1.50 and 1.55 s) but got E' = 1 and 2" in text
    far = {**runs, "eps0": [RunRecord("eps0", r.seed, 2, r.folder, r.knn_acc, r.linear_acc, 3.0, None,
                                      [CurvePoint(p.epoch, p.knn_acc, 3.0 * p.epoch) for p in r.curve])
                            for r in runs["eps0"]]}
    text, _ = build_report(equal_epochs=far, equal_time={**far, **shorter}, plan={"idaa": 1, "eps0": 2}, epochs=2,
                           seeds=[0, 1, 2], calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "by rounding" not in text


def test_longer_baselines_are_compared_with_every_variant_at_their_cost_ratio():
    runs = _two_variant_runs()
    longer = {3: [record("baseline", s, 81.0 + s, 85.5 + s, epochs=3) for s in range(3)],
              4: [record("baseline", s, 82.0 + s, 86.5 + s, epochs=4) for s in range(2)]}
    text, data = build_report(equal_epochs=runs, equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                              calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT, longer_baselines=longer)
    assert "### Against longer baselines: equal time at a given cost ratio" in text
    # IDAA 81.5 + s against the 3-epoch baseline 81.0 + s: +0.5 in each of 3 seeds (R = 3 / 2)
    assert "| 1.50 | 3 | 82.0 ± 1.0 / 86.5 ± 1.0 | IDAA - baseline | 3 | +0.50 ± 0.00 (undefined; 0.250) |" in text
    assert "| 2.00 | 4 | 82.5 ± 0.7 / 87.0 ± 0.7 | eps = 0 control - baseline | 2 | -1.50 ± 0.00" in text
    assert "IDAA (2 epochs) - baseline (4 epochs, R = 2.00), kNN: -0.50 points in each of 2 seeds" in text
    assert "Against longer baselines (equal time where a variant's epoch costs R baseline epochs): " in text
    assert "of 14 paired differences" in text  # 6 at equal epochs + 2 variants x 2 ratios x 2 metrics
    entry = next(p for p in data["longer_baselines"] if p["ratio"] == 1.5 and p["variant"] == "idaa"
                 and p["metric"] == "knn_acc")
    assert entry["baseline_epochs"] == 3 and entry["seeds"] == [0, 1, 2] and entry["differences"] == [0.5] * 3
    assert "| baseline | 1 | 3 | 4 |" not in text and "baseline-e4-s1" in text  # the runs table lists them
    assert len(data["runs"]) == 9 + 5


def test_no_longer_baselines_no_section():
    text, data = build_report(equal_epochs=_two_variant_runs(), equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                              calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT,
                              longer_baselines={3: []})
    assert "Against longer baselines" not in text and data["longer_baselines"] == []


def test_longer_baseline_rows_use_the_paired_seeds_only_and_one_seed_has_no_spread():
    runs = {"baseline": [record("baseline", s, 80.0, 85.0) for s in range(3)],
            "idaa": [record("idaa", s, 81.0, 86.0) for s in range(2)],  # seeds 0-1
            "eps0": [record("eps0", 0, 81.0, 86.0)]}  # seed 0 alone
    longer = {4: [record("baseline", s, 70.0 + 10 * s, 75.0, epochs=4) for s in range(3)]}  # 70, 80, 90
    text, data = build_report(equal_epochs=runs, equal_time=None, plan=None, epochs=2, seeds=[0, 1, 2],
                              calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT, longer_baselines=longer)
    assert "| 2.00 | 4 | 75.0 ± 7.1 / 75.0 ± 0.0 | IDAA - baseline | 2 | +6.00 ± 7.07 " in text  # not 80.0 ± 10.0
    assert "| 2.00 | 4 | 70.0 (1 seed) / 75.0 (1 seed) | eps = 0 control - baseline | 1 | +11.00 (undefined; " in text
    single = next(p for p in data["longer_baselines"] if p["variant"] == "eps0")
    assert single["std"] is None and single["t_p_value"] is None
    same_epochs = next(p for p in data["equal_epochs"]["paired"] if p["variant"] == "eps0")
    assert same_epochs["std"] is None and "NaN" not in json.dumps(data)
    assert "| eps = 0 control - baseline (two views) | kNN | +1.00 (1 seed) |" in text and "nan" not in text


def test_the_sign_flip_floor_sentence_counts_the_paired_seeds():
    seven = [record("baseline", s, 80.0, 85.0) for s in range(7)]
    more = [record("idaa", s, 81.0 + s / 10, 86.0 + s / 10) for s in range(7)]
    text, _ = build_report(equal_epochs={"baseline": seven, "idaa": more}, equal_time=None, plan=None, epochs=2,
                           seeds=range(7), calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "cannot reach p < 0.05" not in text  # 7 paired seeds: the floor is 0.016
    text, _ = build_report(equal_epochs={"baseline": seven, "idaa": more[:3]}, equal_time=None, plan=None, epochs=2,
                           seeds=range(7), calibration=CALIBRATION, base=TrainConfig(), context=CONTEXT)
    assert "With 3 paired seeds the exact sign-flip test cannot reach p < 0.05 (its floor is 0.250), so no result " \
           "here is significant" in text  # the report has 7 seeds, the only comparison 3
    text, _ = build_report(equal_epochs={"baseline": seven, "idaa": more, "eps0": more[:2]}, equal_time=None,
                           plan=None, epochs=2, seeds=range(7), calibration=CALIBRATION, base=TrainConfig(),
                           context=CONTEXT)
    assert "With 2 paired seeds the exact sign-flip test cannot reach p < 0.05 (its floor is 0.500), so no " \
           "comparison over 2 seeds (the fewest here) is significant" in text
