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
    # A seed in two reports, other settings, or an existing pooled report: one line each, nothing written.
    other = json.loads(Path(reports[1]).read_text())
    other["config"]["lr"] = 1e-3
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    for argv, out, message in [([reports[0], reports[0]], "p1", "seed(s) [0] are in two reports"),
                               ([reports[0], str(tmp_path / "other.json")], "p2", "made with other settings"),
                               (reports, "pooled", "report.md exists; pass --overwrite")]:
        with pytest.raises(SystemExit):
            pool_reports.main([*argv, "--out", str(tmp_path / out)])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()
