"""The comparison's runs: equal-time epochs, per-variant settings, and a scheduler that reads, resumes and stops."""

from __future__ import annotations

import statistics
import time

import pytest

from helpers import TINY_RUN
from idaa_transforms.experiments.schedule import (VARIANTS, RunSpec, Scheduler, equal_time_epochs,
                                                  longer_baseline_epochs, variant_config)
from idaa_transforms.trainers.config import TrainConfig


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


def test_variant_configs(tmp_path):
    base = TrainConfig(dataset="photos", arch="small_cnn", eps=0.1, temperature=0.2)
    configs = {v: variant_config(base, RunSpec(v, 3, 2), 0.01, tmp_path) for v in VARIANTS}
    assert not configs["baseline"].idaa
    assert configs["idaa"].idaa and configs["idaa"].eps == 0.1 and configs["idaa"].adversary == "idaa"
    assert configs["eps0"].idaa and configs["eps0"].eps == 0.0 and configs["eps0"].adversary == "idaa"
    assert configs["pixel_fgsm"].adversary == "pixel_fgsm" and configs["pixel_fgsm"].pixel_eps == 0.01
    assert all(c.seed == 3 and c.epochs == 2 and c.temperature == 0.2 for c in configs.values())
    assert configs["eps0"].out == str(tmp_path / "eps0-e2-s3")
    with pytest.raises(ValueError, match="variant"):
        variant_config(base, RunSpec("cutout", 0, 1), None, tmp_path)
    with pytest.raises(ValueError, match="calibrated pixel_eps"):
        variant_config(base, RunSpec("pixel_fgsm", 0, 1), None, tmp_path)


def tiny_base(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_RUN, "probe_steps": 5, **overrides})


def test_scheduler_trains_then_reads_back(tmp_path):
    spec = RunSpec("baseline", 0, 1)
    first = Scheduler(tiny_base(), tmp_path).run(spec)
    assert first.wall_seconds is not None and 0 <= first.knn_acc <= 100 and len(first.curve) == 1
    again = Scheduler(tiny_base(), tmp_path).run(spec)
    assert again.wall_seconds is None and (again.knn_acc, again.curve) == (first.knn_acc, first.curve)
    with pytest.raises(ValueError, match=r"made with other settings \(--lr 0.0003 there, 0.001 now\)"):
        Scheduler(tiny_base(lr=1e-3), tmp_path).run(spec)


def test_scheduler_stops_at_its_deadline_and_resumes(tmp_path):
    spec = RunSpec("baseline", 0, 2)
    stopped = Scheduler(tiny_base(), tmp_path, deadline=time.time() + 0.01)
    assert stopped.run(spec) is None  # the first epoch ran; the second would end past the deadline
    assert stopped.unfinished == ["baseline-e2-s0 (1 of 2 epochs)"]
    assert (tmp_path / "baseline-e2-s0" / "checkpoint.pt").is_file()
    # Past its deadline a call still trains one epoch of its first run, as the trainer does, so every call makes
    # progress; no later run starts.
    late = Scheduler(tiny_base(), tmp_path, deadline=time.time() - 1)
    assert late.run(RunSpec("baseline", 1, 2)) is None and late.unfinished == ["baseline-e2-s1 (1 of 2 epochs)"]
    assert late.run(RunSpec("baseline", 2, 2)) is None and late.not_started == ["baseline-e2-s2"]
    with pytest.raises(ValueError, match="unfinished run; pass --resume"):
        Scheduler(tiny_base(), tmp_path).run(spec)
    record = Scheduler(tiny_base(), tmp_path, resume=True).run(spec)
    assert record is not None and [p.epoch for p in record.curve] == [1, 2]


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_resume(tmp_path):
    folder = tmp_path / "baseline-e1-s0"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "lo')  # killed during its first epoch's line
    with pytest.raises(ValueError, match="unfinished run; pass --resume"):
        Scheduler(tiny_base(), tmp_path).run(RunSpec("baseline", 0, 1))
    record = Scheduler(tiny_base(), tmp_path, resume=True).run(RunSpec("baseline", 0, 1))
    assert record is not None and [p.epoch for p in record.curve] == [1]


def test_whole_runs_starts_only_what_its_variant_says_will_finish(tmp_path):
    first = Scheduler(tiny_base(), tmp_path)
    assert first.expected_seconds(RunSpec("baseline", 0, 2)) is None  # nothing to go by yet
    record = first.run(RunSpec("baseline", 0, 2))
    per_epoch = statistics.median(record.epoch_seconds)
    overhead = record.wall_seconds - record.curve[-1].seconds
    assert first.expected_seconds(RunSpec("baseline", 1, 4)) == pytest.approx(4 * per_epoch + overhead)

    # Read back on another machine, the run's epochs still give an estimate (no overhead measured there yet).
    later = Scheduler(tiny_base(), tmp_path, whole_runs=True, deadline=time.time() + 60)
    assert later.run(RunSpec("baseline", 0, 2)).wall_seconds is None
    assert later.run(RunSpec("baseline", 1, 100_000)) is None and later.not_started == ["baseline-e100000-s1"]
    assert not (tmp_path / "baseline-e100000-s1").exists()  # nothing was started that would be lost
    assert later.run(RunSpec("idaa", 1, 1)) is not None  # no estimate for its variant: started


def test_after_the_first_run_a_run_whose_first_epoch_would_end_past_the_deadline_is_not_started(tmp_path,
                                                                                                 monkeypatch):
    scheduler = Scheduler(tiny_base(), tmp_path, deadline=time.time() + 60)
    monkeypatch.setattr(scheduler, "epoch_seconds", lambda variant, epochs=None: [120.0] if variant == "idaa" else [])
    assert scheduler.run(RunSpec("baseline", 0, 1)) is not None  # the call's first run
    assert scheduler.run(RunSpec("idaa", 0, 1)) is None and scheduler.not_started == ["idaa-e1-s0"]
    assert not (tmp_path / "idaa-e1-s0").exists()
    assert scheduler.run(RunSpec("baseline", 1, 1)) is not None  # no estimate for its variant: started
    scheduler.deadline = time.time() + 600  # one 120-second epoch fits now
    assert scheduler.run(RunSpec("idaa", 0, 1)) is not None


def test_longer_baseline_epochs_round_each_ratio_and_sort_them():
    assert longer_baseline_epochs(10, [2.0, 1.35, 1.2]) == [12, 14, 20]
    assert longer_baseline_epochs(10, [1.25]) == [13]  # halves round up, not to even
    assert longer_baseline_epochs(6, [1.09]) == [7]  # the smallest ratio the error below suggests for 6 epochs
    assert longer_baseline_epochs(10, [100]) == [1000] and longer_baseline_epochs(10, []) == []


@pytest.mark.parametrize("epochs, ratios, match", [(10, [1.0], "not more than the variants' 10"),
                                                   (10, [1.04], "at least 1.05 for 10 epochs"),
                                                   (6, [1.08], "at least 1.09 for 6 epochs"),
                                                   (10, [0.5], "gives the baseline 5 epochs"),
                                                   (10, [float("nan")], "at most 100"),
                                                   (10, [1e308], "at most 100"),
                                                   (10, [float("inf")], "at most 100"),
                                                   (10, [1.4, 1.36], "both give the baseline 14 epochs"),
                                                   (0, [2.0], "epochs: expected a positive int")])
def test_longer_baseline_epochs_refuse_ratios_that_add_no_epoch(epochs, ratios, match):
    with pytest.raises(ValueError, match=match):
        longer_baseline_epochs(epochs, ratios)
