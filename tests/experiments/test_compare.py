"""The comparison's command line end to end on tiny data: every trainer option, the report, reading back, refusals."""

from __future__ import annotations

import json
import statistics
import time

import pytest

from idaa_transforms import _files
from idaa_transforms.experiments import compare
from idaa_transforms.experiments.schedule import VARIANTS

TINY = ["--seeds", "0", "1", "--epochs", "1", "--crops-per-photo", "8", "--batch-size", "32", "--arch", "small_cnn",
        "--probe-steps", "5", "--device", "cpu", "--calibration-images", "32"]


def test_parser_takes_every_trainer_option_with_the_harness_defaults():
    parser = compare.build_parser()
    args = parser.parse_args(["--temperature", "0.2", "--attack-steps", "2", "--no-dual-bn", "--optimizer", "sgd",
                              "--dataset", "cifar10", "--data-dir", "data/cifar10", "--subset", "2000",
                              "--variants", "baseline,idaa,eps0", "--max-minutes", "30", "--resume"])
    assert (args.temperature, args.attack_steps, args.dual_bn, args.optimizer) == (0.2, 2, False, "sgd")
    assert (args.dataset, args.data_dir, args.subset) == ("cifar10", "data/cifar10", 2000)
    assert (args.max_minutes, args.resume_runs) == (30.0, True)
    assert args.variants == [["baseline", "idaa", "eps0"]]
    defaults = parser.parse_args([])
    assert (defaults.dataset, defaults.epochs, defaults.batch_size, defaults.arch) == ("photos", 10, 128, None)
    assert defaults.seeds == [0, 1, 2, 3, 4] and defaults.lr == 3e-4
    help_text = parser.format_help()
    assert "--seeds SEEDS [SEEDS ...]" in help_text and "default: resnet18 with CUDA" in help_text


@pytest.mark.parametrize("argv, match", [(["--variants", "baseline,cutout"], "--variants: expected comma-separated"),
                                         (["--lr", "nan"], "--lr: expected a finite number > 0"),
                                         (["--max-minutes", "0"], "--max-minutes: expected a finite number > 0"),
                                         (["--stop-after", "3"], "unrecognized arguments: --stop-after"),
                                         (["--seeds", "0", "0"], "expected distinct seeds"),
                                         (["--cost-ratios", "1.02"], "--cost-ratios: 1.02 gives the baseline 10 "
                                                                     "epochs"),
                                         (["--cost-ratios", "1.5", "1.52"], "both give the baseline 15 epochs"),
                                         (["--cost-ratios", "-2"], "--cost-ratios: expected a finite number > 0"),
                                         (["--cost-ratios", "1e308"], "--cost-ratios: expected ratios of at most 100"),
                                         (["--variants", "baseline", "--cost-ratios", "2"],
                                          "--variants names the baseline alone"),
                                         (["--seed", "0"], "unrecognized arguments: --seed")])
def test_bad_arguments_are_one_line_errors(argv, match, capsys):
    with pytest.raises(SystemExit):
        compare.main(argv)
    assert match in capsys.readouterr().err


def test_an_out_another_call_holds_is_a_one_line_error(tmp_path, capsys):
    with _files.claim_folder(tmp_path / "runs"):
        with pytest.raises(SystemExit) as exit_:
            compare.main([*TINY, "--variants", "baseline", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is in use by another run" in err and err.count("\n") == 1
    assert list((tmp_path / "runs").iterdir()) == []  # nothing trained, no call on record


def test_a_training_runs_folder_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # a single run's --out, not a comparison's
    with pytest.raises(SystemExit) as exit_:
        compare.main([*TINY, "--variants", "baseline", "--out", str(tmp_path), "--resume"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "holds an SSL training run (checkpoint.pt), not a comparison; choose another --out" in err
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_report_dir_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        compare.main([*TINY, "--variants", "baseline", "--out", str(tmp_path / "runs"), "--report-dir",
                      str(tmp_path / "a-file")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"--report-dir: {tmp_path / 'a-file'} is a file, not a folder" in err


def test_ctrl_c_is_one_line_that_says_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "_compare", interrupted)
    with pytest.raises(SystemExit) as exit_:
        compare.main([*TINY, "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and err.count("\n") == 1
    assert err.endswith(f": interrupted; the same command with --resume continues from the last checkpoint in "
                        f"{tmp_path / 'runs'}\n")


def test_a_damaged_file_in_the_out_folder_is_named_with_what_to_do(tmp_path, capsys):
    argv = [*TINY[3:], "--seeds", "0", "--variants", "baseline,idaa", "--no-equal-time", "--no-anchors", "--out",
            str(tmp_path)]
    compare.main(argv)
    capsys.readouterr()
    for name, advice in [("baseline-e1-s0/results.json", "delete it, and the same command with --resume evaluates"),
                         ("calibration.json", "delete it to calibrate again"),
                         ("views.safetensors", "delete it to draw the views again")]:
        kept = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(SystemExit) as exit_:
            compare.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert f"{tmp_path / name} is damaged (" in err and advice in err
        (tmp_path / name).write_bytes(kept)


def test_compare_end_to_end(tmp_path, capsys, monkeypatch):
    argv = [*TINY, "--out", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report")]
    data = compare.main(argv)
    report = (tmp_path / "report" / "report.md").read_text()
    for name in ("report.md", "compare.json", "knn_curves.png", "views_grid.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert set(data["equal_epochs"]["variants"]) == set(VARIANTS)
    plan = data["equal_time_plan"]  # E' from measured seconds: at least one epoch each (timing-dependent above)
    assert set(plan) == {"idaa", "eps0", "pixel_fgsm"} and all(isinstance(e, int) and e >= 1 for e in plan.values())
    assert data["calibration"]["fgsm_l2"] == pytest.approx(data["calibration"]["idaa_l2"], rel=1e-3)
    paired = {(p["variant"], p["against"], p["metric"]) for p in data["equal_epochs"]["paired"]}
    assert ("idaa", "baseline", "knn_acc") in paired and ("idaa", "eps0", "linear_acc") in paired
    assert len(data["runs"]) == 4 * 2 + sum(2 for e in plan.values() if e != 1)
    assert not data["not_started"] and not data["unfinished"]
    assert 0 <= data["anchors"]["random_init_knn"] <= 100 and data["anchors"]["published"] == []
    for text in ("paired t p", "sign-flip p", "s / epoch", "Equal wall-clock time", "pixel FGSM eps =",
                 "What this does and does not show", "CIFAR-10 training split only", "--seeds 0 1", "machine:", "date:",
                 "randomly initialised small_cnn"):
        assert text in report, text
    assert "cannot reach p < 0.05" in report  # 2 seeds: the sign-flip floor is 0.5
    assert json.loads((tmp_path / "report" / "compare.json").read_text()) == json.loads(json.dumps(data))
    # A second call reads the finished runs instead of training again.
    capsys.readouterr()
    again = compare.main(argv)
    assert all(r["wall_seconds"] is None for r in again["runs"])  # None: read back, not trained
    assert "kNN accuracy" not in capsys.readouterr().out

    def stable(runs):
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in runs]

    assert stable(again["runs"]) == stable(data["runs"])
    # Finished runs made with other settings are refused before anything is computed (no calibration first).
    monkeypatch.setattr(compare, "calibrate", lambda *a, **k: pytest.fail("calibrated before the refusal"))
    with pytest.raises(SystemExit):
        compare.main([*argv, "--eps", "0.2"])
    assert ("baseline-e1-s0/results.json was made with other settings (--eps 0.1 there, 0.2 now); use another "
            "--out") in capsys.readouterr().err
    # The matched pixel eps depends on the settings: a saved calibration made with others is refused, not reused.
    with pytest.raises(SystemExit):
        compare.main([*argv, "--calibration-images", "16"])
    assert "calibration.json was made with other settings" in capsys.readouterr().err
    calls = (tmp_path / "runs" / "calls.jsonl").read_text().splitlines()
    assert len(calls) == 2 and "--eps" not in calls[-1]  # the refused calls wrote no report, so are not on record


def test_whole_runs_that_fit_in_no_call_say_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare._cli, "deadline_after", lambda minutes, start=None: time.time() - 1)
    data = compare.main([*TINY, "--variants", "baseline", "--no-equal-time", "--no-anchors", "--whole-runs",
                         "--max-minutes", "1", "--out", str(tmp_path)])
    assert data["not_started"] == ["baseline-e1-s0", "baseline-e1-s1"] and data["runs"] == []
    assert "--whole-runs: no run fitted in --max-minutes 1, so this call trained nothing" in capsys.readouterr().err


def test_max_minutes_then_resume_accumulates_in_one_report(tmp_path, capsys, monkeypatch):
    argv = [*TINY, "--epochs", "2", "--variants", "baseline", "--no-equal-time", "--no-anchors", "--out",
            str(tmp_path)]
    with monkeypatch.context() as patch:  # time is up before the first run starts: it trains one epoch, no more
        patch.setattr(compare._cli, "deadline_after", lambda minutes, start=None: time.time() - 1)
        stopped = compare.main([*argv, "--max-minutes", "0.0001"])
    assert stopped["unfinished"] == ["baseline-e2-s0 (1 of 2 epochs)"] and stopped["runs"] == []
    assert stopped["not_started"] == ["baseline-e2-s1"] and compare.exit_status(stopped) == 3
    assert "not started" in (tmp_path / "report.md").read_text()
    assert "2 run(s) left for --resume" in capsys.readouterr().out
    finished = compare.main([*argv, "--resume"])
    assert [r["seed"] for r in finished["runs"]] == [0, 1] and not finished["not_started"]
    assert compare.exit_status(finished) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| baseline (two views) | 2 | 2 |" in text
    # Both calls are on record: the report names the earlier one, the JSON lines keep both.
    assert "earlier calls that wrote this report, oldest first (1):" in text and "--max-minutes 0.0001" in text
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["command"].endswith("--resume") for c in calls] == [False, True]
    assert finished["context"]["earlier_calls"] == calls[:1]


def test_variants_not_asked_for_are_not_in_the_report_or_the_picture(tmp_path):
    from PIL import Image

    argv = [*TINY, "--seeds", "0", "--no-equal-time", "--no-anchors", "--out", str(tmp_path)]
    compare.main([*argv, "--variants", "baseline,idaa"])
    text = (tmp_path / "report.md").read_text()
    assert "FGSM" not in text and "eps = 0" not in text and "IDAA's perturbation" in text
    five_rows = Image.open(tmp_path / "views_grid.png").height
    # A folder from before views.safetensors existed: its calibration (the eps its runs used) is kept as it is.
    saved = json.loads((tmp_path / "calibration.json").read_text())
    (tmp_path / "calibration.json").write_text(json.dumps({**saved, "pixel_eps": 0.0123}))
    (tmp_path / "views.safetensors").unlink()
    compare.main([*argv, "--variants", "baseline,idaa"])
    assert json.loads((tmp_path / "calibration.json").read_text())["pixel_eps"] == 0.0123
    assert (tmp_path / "views.safetensors").is_file()
    # Asking for the pixel FGSM later reuses the calibration and draws its rows too.
    data = compare.main([*argv, "--variants", "baseline,idaa,pixel_fgsm"])
    assert "pixel FGSM eps = 0.01230" in (tmp_path / "report.md").read_text()
    assert data["calibration"]["pixel_eps"] == 0.0123
    assert Image.open(tmp_path / "views_grid.png").height > five_rows


def test_baseline_alone_is_not_calibrated(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "calibrate", lambda *a, **k: pytest.fail("calibrated for the baseline alone"))
    data = compare.main([*TINY, "--seeds", "0", "--variants", "baseline", "--no-anchors", "--out", str(tmp_path)])
    assert data["calibration"] is None and not (tmp_path / "views_grid.png").exists()


def test_cost_ratios_train_longer_baselines_and_compare_every_variant_with_them(tmp_path, monkeypatch, capsys):
    argv = [*TINY, "--seeds", "0", "1", "--variants", "baseline,idaa", "--no-equal-time", "--no-anchors",
            "--cost-ratios", "2", "--out", str(tmp_path)]
    data = compare.main(argv)
    assert sorted((r["variant"], r["epochs"], r["seed"]) for r in data["runs"]) == [
        ("baseline", 1, 0), ("baseline", 1, 1), ("baseline", 2, 0), ("baseline", 2, 1), ("idaa", 1, 0), ("idaa", 1, 1)]
    runs = {(r["variant"], r["epochs"], r["seed"]): r for r in data["runs"]}
    knn = next(p for p in data["longer_baselines"] if p["metric"] == "knn_acc")
    assert (knn["variant"], knn["ratio"], knn["baseline_epochs"], knn["seeds"]) == ("idaa", 2.0, 2, [0, 1])
    assert knn["differences"] == pytest.approx([runs["idaa", 1, s]["knn_acc"] - runs["baseline", 2, s]["knn_acc"]
                                                for s in (0, 1)])
    text = (tmp_path / "report.md").read_text()
    assert "### Against longer baselines" in text and "| 2.00 | 2 |" in text
    # The equal-epoch comparison is untouched by the longer baselines, and they are read back, not retrained.
    paired = {(p["variant"], p["metric"]): p["differences"] for p in data["equal_epochs"]["paired"]}
    assert paired["idaa", "knn_acc"] == pytest.approx([runs["idaa", 1, s]["knn_acc"] - runs["baseline", 1, s]["knn_acc"]
                                                       for s in (0, 1)])
    again = compare.main(argv)
    assert again["longer_baselines"] == data["longer_baselines"]
    assert all(r["wall_seconds"] is None for r in again["runs"])  # None: read back, not trained
    # Another ratio later adds its baselines; those of the earlier ratio stay in the report, also without the option.
    three = compare.main([*argv[:-4], "--cost-ratios", "3", "--out", str(tmp_path)])
    assert {p["baseline_epochs"] for p in three["longer_baselines"]} == {2, 3}
    assert "| 2.00 | 2 |" in (tmp_path / "report.md").read_text()
    plain = compare.main([a for a in argv if a not in ("--cost-ratios", "2")])
    assert {p["baseline_epochs"] for p in plain["longer_baselines"]} == {2, 3}
    assert all(r["wall_seconds"] is None for r in plain["runs"])
    # One made with other settings is left out of a call that did not ask for it, and the call says so.
    results = tmp_path / "baseline-e3-s1" / "results.json"
    saved = json.loads(results.read_text())
    results.write_text(json.dumps({**saved, "config": {**saved["config"], "temperature": 0.1}}))
    capsys.readouterr()
    left = compare.main([a for a in argv if a not in ("--cost-ratios", "2")])
    assert "left out of the report:" in capsys.readouterr().out
    assert {(p["baseline_epochs"], tuple(p["seeds"])) for p in left["longer_baselines"]} == {(2, (0, 1)), (3, (0,))}
    # Equal time is planned from the equal-epoch runs' seconds, not from the longer baselines'.
    seen = []
    monkeypatch.setattr(compare, "equal_time_epochs", lambda epochs, b, v: seen.append(b) or 1)
    compare.main([a for a in argv if a != "--no-equal-time"])
    per_epoch = [r["curve"][0][2] for r in data["runs"] if r["variant"] == "baseline" and r["epochs"] == 1]
    assert seen == [pytest.approx(statistics.median(per_epoch))]
