"""Pool the runs of several comparison reports into one report, when their run folders are gone.

The comparison harness accumulates runs in one ``--out`` folder; this is for runs made by separate calls, with other
seeds and the same settings, whose folders were not kept: their ``compare.json`` files hold every finished run's
accuracies and curve. The pooled report is built by the harness's own :func:`build_report`, so its tables, paired
tests and sentences are the harness's. It covers the finished equal-epoch runs, and the equal wall-clock time runs
when every report planned the same equal-time epochs E' (E' is rounded from each call's measured costs, so two calls
can plan differently; then the equal-time runs are left out, and the report says why). Runs a call left unfinished
are not in it; it copies the first report's views picture.

    python scripts/pool_reports.py docs/evidence/cifar10-cpu-10k/compare.json runs/compare-s34/compare.json \\
        --out runs/pooled

Baselines trained longer by separate calls (``--variants baseline --epochs 14``) join with ``--longer-baselines``:
every variant is then also compared with them, as the harness's ``--cost-ratios`` does.

Refused, in one line: reports whose settings, variants, calibration (beyond float rounding: :data:`CALIBRATION_RTOL`,
:data:`CALIBRATION_ATOL`) or epochs differ, that share a seed, or longer baselines of seeds no report has.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idaa_transforms import _cli, _files
from idaa_transforms.experiments.anchors import published_anchors
from idaa_transforms.experiments.calibration import Calibration
from idaa_transforms.experiments.plots import write_knn_plot
from idaa_transforms.experiments.report import Anchors, ReportContext, build_report
from idaa_transforms.experiments.schedule import LABELS, VARIANTS, CurvePoint, RunRecord
from idaa_transforms.trainers.config import TrainConfig

#: Settings that may differ between the pooled reports (where the runs went, how long a call could last).
PER_CALL = ("out", "resume", "overwrite", "stop_after", "max_minutes", "no_progress", "seed")
#: Relative tolerance on a calibration's measured figures (the pixel eps, the mean L2 and max L-inf perturbations):
#: two machines' float rounding moved them by about 2e-6; a pooled report uses the first report's calibration.
CALIBRATION_RTOL = 1e-4
#: Absolute tolerance beside it, for figures that are rounding noise themselves (the eps = 0 control's L2, ~1e-8).
CALIBRATION_ATOL = 1e-6


def pool(reports: list[dict[str, Any]], command: str, longer: Sequence[dict[str, Any]] = ()
         ) -> tuple[str, dict[str, Any], dict[str, list[RunRecord]], dict[str, list[RunRecord]], int]:
    """The pooled report (markdown and JSON), its equal-epoch and its equal-time runs by variant, and the epochs.

    ``longer`` are baseline-only reports of the same settings trained for more epochs (``--variants baseline
    --epochs 14``): their runs join the longer baselines of ``reports`` (``--cost-ratios``).

    Raises:
        ValueError: the reports cannot be pooled (other settings, calibration or epochs, or a seed in two of them).
    """
    first = reports[0]
    for other in longer:
        if _variants(other) != ["baseline"] or other["epochs"] <= first["epochs"]:
            raise ValueError(f"--longer-baselines: expected reports of the baseline alone trained for more than "
                             f"{first['epochs']} epochs, got {', '.join(_variants(other))} at {other['epochs']}.")
        try:
            _check_settings(first, other, also=("epochs",))
        except ValueError as err:
            raise ValueError(f"--longer-baselines: {err}") from None
    for other in reports[1:]:
        if other["epochs"] != first["epochs"]:
            raise ValueError(f"the reports differ in their epochs ({first['epochs']} vs {other['epochs']}); only runs "
                             f"made with the same settings can be pooled.")
        if not _same_calibration(first["calibration"], other["calibration"]):
            raise ValueError(f"the reports differ in their calibration ({first['calibration']} vs "
                             f"{other['calibration']}); only runs made with the same settings can be pooled.")
        if _variants(other) != _variants(first):
            raise ValueError(f"the reports compare other variants ({_variants(first)} vs {_variants(other)}); pool "
                             f"calls made with the same --variants.")
        _check_settings(first, other)
    seeds: list[int] = []
    for report in reports:
        shared = sorted(set(seeds) & set(report["seeds"]))
        if shared:
            raise ValueError(f"seed(s) {shared} are in two reports; pool reports of distinct seeds.")
        seeds += report["seeds"]
    epochs, variants = first["epochs"], _variants(first)
    records = sorted((_record(row) for report in reports for row in report["runs"] if row["variant"] in variants),
                     key=lambda r: r.seed)
    runs = {v: [r for r in records if r.variant == v and r.epochs == epochs] for v in variants}
    longer_runs: dict[int, list[RunRecord]] = {}  # the baseline's runs trained longer, by their epochs
    for record in sorted((_record(row) for report in [*reports, *longer] for row in report["runs"]
                          if row["variant"] == "baseline" and row["epochs"] > epochs), key=lambda r: r.seed):
        longer_runs.setdefault(record.epochs, []).append(record)
    for baseline_epochs, found in longer_runs.items():
        twice = sorted({r.seed for r in found if sum(o.seed == r.seed for o in found) > 1})
        if twice:
            raise ValueError(f"seed(s) {twice} of the baseline at {baseline_epochs} epochs are in two reports; pool "
                             f"reports of distinct seeds.")
        unpaired = sorted({r.seed for r in found} - set(seeds))
        if unpaired:
            raise ValueError(f"--longer-baselines: seed(s) {unpaired} of the baseline at {baseline_epochs} epochs "
                             f"are in none of the reports pooled (seeds {sorted(seeds)}), so nothing pairs with "
                             f"them; pool the reports of those seeds too, or leave those runs out.")
    plan, not_pooled = _shared_plan(reports)
    equal_time = None
    if plan:
        equal_time = {"baseline": runs["baseline"]}
        equal_time |= {v: [r for r in records if r.variant == v and r.epochs == e] for v, e in plan.items()}
    calls = [call for report in [*reports, *longer] for call in
             [*report["context"]["earlier_calls"], {k: report["context"][k] for k in ("command", "date", "machine")}]]
    context = ReportContext(command=command,
                            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            machine="the machines of the pooled calls, listed below", data=first["context"]["data"],
                            earlier_calls=calls)
    base = TrainConfig(**{k: v for k, v in first["config"].items() if k in {f.name for f in
                                                                             dataclasses.fields(TrainConfig)}})
    knn = [r["anchors"]["random_init_knn"] for r in reports if r["anchors"]["random_init_knn"] is not None]
    anchors = Anchors(knn[0] if knn else None, published_anchors(base.dataset))
    calibration = None if first["calibration"] is None else Calibration.from_dict(first["calibration"])
    text, data = build_report(equal_epochs=runs, equal_time=equal_time, plan=plan, epochs=epochs,
                              seeds=sorted(seeds), calibration=calibration, base=base, context=context,
                              anchors=anchors, longer_baselines=dict(sorted(longer_runs.items())),
                              plan_by_calls=len(reports) > 1)
    if not_pooled:
        head, runs_table = text.split("\n## Runs\n", 1)
        text = f"{head}\nEqual wall-clock time: not pooled, {not_pooled}\n\n## Runs\n{runs_table}"
        data["equal_time_not_pooled"] = not_pooled
    return text, data, runs, equal_time or {}, epochs


def _record(row: dict[str, Any]) -> RunRecord:
    """A run of a compare.json file."""
    return RunRecord(**{**row, "curve": [CurvePoint(*point) for point in row["curve"]]})


def _check_settings(first: dict[str, Any], other: dict[str, Any], also: Sequence[str] = ()) -> None:
    """Refuse a report made with settings other than ``first``'s (those of :data:`PER_CALL` and ``also`` aside)."""
    names = (set(first["config"]) | set(other["config"])) - set(PER_CALL) - set(also)
    changed = {k: (first["config"].get(k), other["config"].get(k)) for k in sorted(names)
               if first["config"].get(k) != other["config"].get(k)}
    if changed:
        raise ValueError(f"the reports were made with other settings (name: (first, other)): {changed}.")


def _same_calibration(first: dict[str, Any] | None, other: dict[str, Any] | None) -> bool:
    """Whether two calibrations are the same one: equal settings, and measured figures equal within
    :data:`CALIBRATION_RTOL` or :data:`CALIBRATION_ATOL` (the same calibration on two machines differs in the last
    digits of float rounding)."""
    if first is None or other is None or set(first) != set(other):
        return first == other
    return all(math.isclose(a, b, rel_tol=CALIBRATION_RTOL, abs_tol=CALIBRATION_ATOL)
               if isinstance(a, float) and isinstance(b, float) else a == b
               for a, b in ((first[k], other[k]) for k in first))


def _shared_plan(reports: list[dict[str, Any]]) -> tuple[dict[str, int] | None, str | None]:
    """The equal-time epochs every report planned, or ``None`` and why the equal-time runs cannot be pooled
    (``None`` as well when no report has equal-time runs)."""
    plans = [report.get("equal_time_plan") for report in reports]
    if not any(plans):
        return None, None
    if not all(plans):
        return None, (f"because the equal-time runs are missing from {sum(not p for p in plans)} of the "
                      f"{len(plans)} reports (--no-equal-time).")
    if any(p != plans[0] for p in plans[1:]):
        listed = "; ".join(", ".join(f"{LABELS[v]} {e}" for v, e in p.items()) for p in plans)
        return None, (f"because the reports planned different equal-time epochs E' ({listed}), each rounded from "
                      f"its own call's measured costs; their equal-time runs are in the reports themselves.")
    return plans[0], None


def _variants(report: dict[str, Any]) -> list[str]:
    """The variants a report compares: those of its runs and of its tables (the baseline always)."""
    named = {"baseline", *report["equal_epochs"]["variants"], *(r["variant"] for r in report["runs"])}
    return [v for v in VARIANTS if v in named]


def _read(path: Path) -> dict[str, Any]:
    """A compare.json file of the harness, or a one-line error."""
    try:
        report = _files.read_json(path, advice="give a compare.json the comparison harness wrote")
    except OSError as err:
        raise ValueError(f"{path}: cannot read it ({err.strerror}); give a compare.json the harness wrote.") from None
    missing = [k for k in ("config", "calibration", "epochs", "seeds", "runs", "equal_epochs", "context", "anchors")
               if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(f"{path}: not a compare.json of the comparison harness (no {', '.join(missing)}).")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = _cli.ArgumentParser(prog="scripts/pool_reports.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="compare.json files of the calls to pool")
    parser.add_argument("--out", type=Path, required=True, help="folder of the pooled report.md, compare.json, PNG")
    parser.add_argument("--longer-baselines", type=Path, nargs="+", default=[], metavar="REPORT",
                        help="compare.json files of the baseline alone trained for more epochs, same settings "
                             "(--variants baseline --epochs N): every variant is compared with them too")
    parser.add_argument("--overwrite", action="store_true", help="replace a pooled report already in --out")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(args.reports) < 2 and not args.longer_baselines:
            raise ValueError("give at least two compare.json files to pool, or one with --longer-baselines.")
        if (args.out / "report.md").exists() and not args.overwrite:
            raise ValueError(f"{args.out / 'report.md'} exists; pass --overwrite to replace it.")
        reports, longer = [_read(path) for path in args.reports], [_read(path) for path in args.longer_baselines]
        text, data, runs, equal_time, epochs = pool(reports, "python scripts/pool_reports.py " + shlex.join(argv),
                                                    longer)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    _files.atomic_write_text(args.out / "report.md", text)
    _files.atomic_write_json(args.out / "compare.json", data)
    write_knn_plot(runs, equal_time, args.out / "knn_curves.png", epochs)
    views = args.reports[0].parent / "views_grid.png"
    if data["calibration"] is not None and views.is_file():  # the report names it
        _files.atomic_write_bytes(args.out / "views_grid.png", views.read_bytes())
    print(f"pooled report of seeds {data['seeds']}: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
