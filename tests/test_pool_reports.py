"""scripts/pool_reports.py: runs of separate calls, pooled, give the report one call with all their seeds gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from idaa_transforms.experiments import compare

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--crops-per-photo", "8", "--batch-size", "32", "--arch", "small_cnn", "--probe-steps", "5",
        "--device", "cpu", "--calibration-images", "16", "--variants", "baseline,idaa", "--no-equal-time",
        "--no-anchors"]


def load_script():
    spec = importlib.util.spec_from_file_location("pool_reports", ROOT / "scripts" / "pool_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paired(data):
    return {(p["variant"], p["against"], p["metric"]): (p["seeds"], [round(d, 6) for d in p["differences"]])
            for p in data["equal_epochs"]["paired"]}


def test_pooled_calls_equal_one_call_with_all_their_seeds(tmp_path, capsys):
    both = compare.main([*TINY, "--seeds", "0", "1", "--out", str(tmp_path / "both")])
    compare.main([*TINY, "--seeds", "0", "--out", str(tmp_path / "s0")])
    compare.main([*TINY, "--seeds", "1", "--out", str(tmp_path / "s1")])
    pool_reports = load_script()
    reports = [str(tmp_path / name / "compare.json") for name in ("s0", "s1")]
    assert pool_reports.main([*reports, "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "compare.json").read_text())
    assert pooled["seeds"] == [0, 1] and paired(pooled) == paired(both)
    text = (tmp_path / "pooled" / "report.md").read_text()
    assert "| IDAA | 1 | 2 |" in text and "earlier calls that wrote this report, oldest first (2):" in text
    assert (tmp_path / "pooled" / "knn_curves.png").stat().st_size > 0
    assert (tmp_path / "pooled" / "views_grid.png").read_bytes() == (tmp_path / "s0" / "views_grid.png").read_bytes()
    # A seed in two reports, other settings or variants, no compare.json, or an existing pooled report: one line
    # each, nothing written.
    def variant_of(path, name, change):
        data = json.loads(Path(path).read_text())
        change(data)
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)

    other_lr = variant_of(reports[1], "lr.json", lambda d: d["config"].update(lr=1e-3))
    other_eps = variant_of(reports[1], "eps.json", lambda d: d["calibration"].update(
        pixel_eps=d["calibration"]["pixel_eps"] * 1.01))
    other_images = variant_of(reports[1], "images.json", lambda d: d["calibration"].update(images=17))
    no_lr = variant_of(reports[1], "no-lr.json", lambda d: d["config"].pop("lr"))
    no_idaa = variant_of(reports[1], "no-idaa.json", lambda d: d.update(
        runs=[r for r in d["runs"] if r["variant"] == "baseline"],
        equal_epochs={**d["equal_epochs"], "variants": {"baseline": d["equal_epochs"]["variants"]["baseline"]}}))
    cut_off = str(tmp_path / "cut.json")
    Path(cut_off).write_text(Path(reports[1]).read_text()[:100])
    capsys.readouterr()
    for argv, out, message in [([reports[0], reports[0]], "p1", "seed(s) [0] are in two reports"),
                               ([reports[0], other_lr], "p2", "made with other settings"),
                               ([reports[0], other_eps], "p2", "differ in their calibration"),
                               ([reports[0], other_images], "p2", "differ in their calibration"),
                               ([reports[0], no_lr], "p2", "'lr': (0.0003, None)"),
                               ([reports[0], no_idaa], "p2", "compare other variants (['baseline', 'idaa'] vs "
                                                             "['baseline'])"),
                               ([reports[0], str(tmp_path / "s0" / "calls.jsonl")], "p2", "not a compare.json of the"),
                               ([reports[0], str(tmp_path / "gone.json")], "p2", "gone.json: cannot read it"),
                               ([reports[0], cut_off], "p2", "cut.json is damaged"),
                               (reports, "pooled", "report.md exists; pass --overwrite")]:
        with pytest.raises(SystemExit):
            pool_reports.main([*argv, "--out", str(tmp_path / out)])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_calibrations_equal_up_to_float_rounding_pool(tmp_path):
    # The same calibration on two machines: its measured figures differ in the 6th-7th significant digit.
    compare.main([*TINY, "--seeds", "0", "--out", str(tmp_path / "s0")])
    compare.main([*TINY, "--seeds", "1", "--out", str(tmp_path / "s1")])
    data = json.loads((tmp_path / "s1" / "compare.json").read_text())
    calibration = data["calibration"]
    data["calibration"] = {k: v * (1 + 2e-6) if isinstance(v, float) else v for k, v in calibration.items()}
    data["calibration"]["eps0_l2"] = calibration["eps0_l2"] + 1e-8  # a figure that is rounding noise itself
    (tmp_path / "s1-rounded.json").write_text(json.dumps(data))
    pool_reports = load_script()
    assert pool_reports.main([str(tmp_path / "s0" / "compare.json"), str(tmp_path / "s1-rounded.json"),
                              "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "compare.json").read_text())
    first = json.loads((tmp_path / "s0" / "compare.json").read_text())["calibration"]
    assert pooled["seeds"] == [0, 1] and pooled["calibration"]["pixel_eps"] == first["pixel_eps"]


def test_baseline_only_reports_pool_without_a_calibration(tmp_path):
    for seed in ("0", "1"):
        compare.main([*TINY, "--variants", "baseline", "--seeds", seed, "--out", str(tmp_path / seed)])
    pool_reports = load_script()
    assert pool_reports.main([str(tmp_path / "0" / "compare.json"), str(tmp_path / "1" / "compare.json"),
                              "--out", str(tmp_path / "pooled")]) == 0
    data = json.loads((tmp_path / "pooled" / "compare.json").read_text())
    assert data["calibration"] is None and [r["seed"] for r in data["runs"]] == [0, 1]
    assert not (tmp_path / "pooled" / "views_grid.png").exists()


def test_equal_time_runs_pool_when_every_report_planned_the_same_epochs(tmp_path, monkeypatch, capsys):
    # E' is rounded from each call's measured costs; fixed here so that the calls plan alike (and then not).
    monkeypatch.setattr(compare, "equal_time_epochs", lambda epochs, baseline, variant: 1)
    argv = [*(a for a in TINY if a != "--no-equal-time"), "--epochs", "2"]
    both = compare.main([*argv, "--seeds", "0", "1", "--out", str(tmp_path / "both")])
    for seed in ("0", "1"):
        compare.main([*argv, "--seeds", seed, "--out", str(tmp_path / f"s{seed}")])
    assert both["equal_time_plan"] == {"idaa": 1}
    pool_reports = load_script()
    reports = [str(tmp_path / name / "compare.json") for name in ("s0", "s1")]
    assert pool_reports.main([*reports, "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "compare.json").read_text())
    assert pooled["equal_time_plan"] == {"idaa": 1} and "equal_time_not_pooled" not in pooled
    equal_time = {(p["variant"], p["against"], p["metric"]): [round(d, 6) for d in p["differences"]]
                  for p in pooled["equal_time"]["paired"]}
    assert equal_time == {(p["variant"], p["against"], p["metric"]): [round(d, 6) for d in p["differences"]]
                          for p in both["equal_time"]["paired"]} and len(equal_time) == 2
    text = (tmp_path / "pooled" / "report.md").read_text()
    assert "### Equal wall-clock time" in text and "every pooled call planned the same E'" in text
    assert "IDAA 1. The seconds per epoch in the tables are medians over the pooled runs" in text
    # Plans that differ, or a report without equal-time runs: the equal-epoch runs only, and the report says why.
    for name, plan, reason in [("other-plan.json", {"idaa": 2}, "planned different equal-time epochs E' (IDAA 1; "
                                                                "IDAA 2)"),
                               ("no-plan.json", None, "missing from 1 of the 2 reports")]:
        data = json.loads(Path(reports[1]).read_text())
        data["equal_time_plan"] = plan
        (tmp_path / name).write_text(json.dumps(data))
        out = tmp_path / f"pooled-{name}"
        assert pool_reports.main([reports[0], str(tmp_path / name), "--out", str(out)]) == 0
        data = json.loads((out / "compare.json").read_text())
        assert data["equal_time_plan"] is None and reason in data["equal_time_not_pooled"]
        assert paired(data) == paired(both)
        text = (out / "report.md").read_text()
        assert "Equal wall-clock time: not pooled, because" in text and "### Equal wall-clock time" not in text


def test_longer_baselines_of_separate_calls_pool_with_the_comparison(tmp_path, capsys):
    # Three calls: seed 0, seed 1, and the baseline alone for 2 epochs (what --cost-ratios 2 trains in one call).
    for seed in ("0", "1"):
        compare.main([*TINY, "--seeds", seed, "--out", str(tmp_path / f"s{seed}")])
    two_epochs = [*TINY[:TINY.index("--epochs")], *TINY[TINY.index("--epochs") + 2:], "--epochs", "2"]
    compare.main([*two_epochs, "--variants", "baseline", "--seeds", "0", "1", "--out", str(tmp_path / "longer")])
    pool_reports = load_script()
    reports = [str(tmp_path / name / "compare.json") for name in ("s0", "s1")]
    longer = str(tmp_path / "longer" / "compare.json")
    assert pool_reports.main([*reports, "--longer-baselines", longer, "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "compare.json").read_text())
    runs = {(r["variant"], r["epochs"], r["seed"]): r for r in pooled["runs"]}
    assert {("baseline", 2, 0), ("baseline", 2, 1)} <= set(runs)
    for metric in ("knn_acc", "linear_acc"):
        entry = next(p for p in pooled["longer_baselines"] if p["metric"] == metric)
        assert (entry["variant"], entry["ratio"], entry["seeds"]) == ("idaa", 2.0, [0, 1])
        assert entry["differences"] == pytest.approx([runs["idaa", 1, s][metric] - runs["baseline", 2, s][metric]
                                                      for s in (0, 1)])
    assert "### Against longer baselines" in (tmp_path / "pooled" / "report.md").read_text()
    # One comparison and the longer baselines of its seeds: the workflow of two calls.
    data = json.loads(Path(longer).read_text())
    (tmp_path / "longer-s0.json").write_text(json.dumps({**data, "seeds": [0],
                                                         "runs": [r for r in data["runs"] if r["seed"] == 0]}))
    (tmp_path / "longer-lr.json").write_text(json.dumps({**data, "config": {**data["config"], "lr": 1e-3}}))
    assert pool_reports.main([reports[0], "--longer-baselines", str(tmp_path / "longer-s0.json"),
                              "--out", str(tmp_path / "one")]) == 0
    assert [p["seeds"] for p in json.loads((tmp_path / "one" / "compare.json").read_text())["longer_baselines"]] == \
        [[0], [0]]
    # The longer baselines must be the baseline alone, trained longer, with the same settings, each seed once and
    # paired with a seed of the reports.
    capsys.readouterr()
    for argv, message in [([*reports, "--longer-baselines", reports[0]],
                           "expected reports of the baseline alone trained for more than 1 epochs"),
                          ([*reports, "--longer-baselines", longer, longer],
                           "seed(s) [0, 1] of the baseline at 2 epochs are in two reports"),
                          ([reports[0], "--longer-baselines", longer],
                           "seed(s) [1] of the baseline at 2 epochs are in none of the reports pooled (seeds [0])"),
                          ([*reports, "--longer-baselines", str(tmp_path / "longer-lr.json")],
                           "--longer-baselines: the reports were made with other settings"),
                          ([reports[0]], "give at least two compare.json files to pool, or one with --longer")]:
        with pytest.raises(SystemExit):
            pool_reports.main([*argv, "--out", str(tmp_path / "refused")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
