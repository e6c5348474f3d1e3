"""What IDAA buys, with controls: one command that trains, evaluates and reports.

    python -m idaa_transforms.experiments.compare                       # photos, 5 seeds, all variants
    python -m idaa_transforms.experiments.compare --dataset cifar10 --data-dir data/cifar10 --arch resnet18 \\
        --epochs 100 --amp --out runs/compare-cifar10 --max-minutes 50    # then the same command with --resume
    python -m idaa_transforms.experiments.compare --dataset cifar10 --data-dir data/cifar10 --subset 2000 \\
        --variants baseline,idaa,eps0 --out runs/compare-cifar10-cpu     # CPU: small_cnn, 5 seeds, < 30 min

Up to four variants are trained on the same data, with the same seeds and the same number of epochs
(:func:`idaa_transforms.trainers.engine.train`, in this process, one after the other; ``--variants`` picks them,
the baseline is always included):

* ``baseline``: two views, ``L(v1, v2)``;
* ``idaa``: the paper's loss ``L(v1, v2) + alpha * L(v1, x_adv)``, ``x_adv`` from the VAE's latent space;
* ``eps0``: the same third view through the VAE decomposition with no attack step (IDAA with ``eps = 0``: the same
  code path and cost, so ``x_adv`` is ``v1`` reassembled as ``G(v1) + R(v1)``);
* ``pixel_fgsm``: a one-step pixel-space FGSM view with the same strength budget: its ``eps`` gives the same mean L2
  norm per image as IDAA's perturbation, measured once on training views with a fresh encoder
  (:mod:`~idaa_transforms.experiments.calibration`).

Each run is evaluated by kNN and a linear probe on frozen features. Because IDAA makes an epoch more expensive, every
non-baseline variant is also trained at equal wall-clock time: an extra set of runs, with their own full schedule
and ``E' = max(1, round(E * baseline_seconds_per_epoch / variant_seconds_per_epoch))`` epochs, same seeds
(``--no-equal-time`` skips them). Those epochs are rounded from this machine's timing; ``--cost-ratios R ...``
asks the question for a given cost instead: the baseline is also trained for ``R * E`` epochs (rounded), and every
variant's ``E``-epoch runs are compared with it, which is equal time wherever a variant's epoch costs ``R`` baseline
epochs (on a GPU, IDAA's step measured 1.2-1.5 times a plain one); longer baselines that earlier calls finished in
the same ``--out`` stay in the report. Paired differences against the baseline get a
paired t-test and an exact sign-flip test (:mod:`~idaa_transforms.experiments.stats`). The baseline is shown beside
sanity anchors (:mod:`~idaa_transforms.experiments.anchors`): a randomly initialised network and, on CIFAR-10,
published figures.

Every trainer option is accepted (``--temperature``, ``--attack-steps``, ``--no-dual-bn``, ``--optimizer``...); the
harness only sets its own defaults for a few (dataset, epochs, batch size, architecture).

Runs go to ``<out>/<variant>-e<epochs>-s<seed>`` (:mod:`~idaa_transforms.experiments.schedule`). A finished run is
read, not retrained; ``--max-minutes MINUTES`` stops cleanly between runs or between the epochs of a run, leaving
checkpoints, and ``--resume`` continues them. The report (in ``--report-dir``, default ``--out``: ``report.md``,
``compare.json``, ``knn_curves.png``, ``views_grid.png``) is rewritten after every run, so it always holds every
finished run, says how many seeds and epochs each number has, and lists every call that wrote it
(``<out>/calls.jsonl``). It speaks only of the variants asked for: the pixel FGSM's budget, the eps = 0 control's
perturbation and their rows in the views picture appear with their variant; the baseline alone is not calibrated
and has no views picture.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from idaa_transforms import _cli, _files
from idaa_transforms.experiments.anchors import published_anchors, random_init_knn
from idaa_transforms.experiments.calibration import Calibration, calibrate, settings_of
from idaa_transforms.experiments.plots import write_knn_plot, write_views_grid
from idaa_transforms.experiments.report import Anchors, ReportContext, build_report, check_no_leak, describe_machine
from idaa_transforms.experiments.schedule import (VARIANTS, RunRecord, RunSpec, Scheduler, equal_time_epochs,
                                                  longer_baseline_epochs)
from idaa_transforms.trainers.config import TRAIN_FIELDS, TrainConfig, add_train_arguments, config_from_args

__all__ = ["HARNESS_DEFAULTS", "build_parser", "main", "exit_status"]

#: Every call that wrote the report of ``--out``, one JSON line each (command, date, machine): the report lists them.
CALLS = "calls.jsonl"
#: The harness's own defaults for trainer options (everything else keeps TrainConfig's).
HARNESS_DEFAULTS = {"dataset": "photos", "epochs": 10, "batch_size": 128, "arch": None}
#: Trainer options the harness sets per run itself.
_PER_RUN = ("seed", "out", "resume", "overwrite", "stop_after", "max_minutes", "idaa", "adversary", "pixel_eps",
            "no_progress")
CALIBRATION, VIEWS, ANCHORS = "calibration.json", "views.safetensors", "anchors.json"


def variant_list(text: str) -> list[str]:
    """``argparse`` type: comma-separated variant names.

    Example:
        >>> variant_list("baseline,idaa,eps0")
        ['baseline', 'idaa', 'eps0']
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected comma-separated names from {', '.join(VARIANTS)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command line: the comparison's own options, then every trainer option (with the harness's defaults)."""
    p = _cli.ArgumentParser(prog="python -m idaa_transforms.experiments.compare",
                            description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("comparison")
    g.add_argument("--seeds", type=_cli.non_negative_int, nargs="+", default=[0, 1, 2, 3, 4])
    g.add_argument("--variants", type=variant_list, nargs="+", default=[list(VARIANTS)], metavar="NAMES",
                   help=f"comma-separated, from {','.join(VARIANTS)} (default: all); the baseline is always included")
    g.add_argument("--out", default="runs/compare", help="folder of the runs")
    g.add_argument("--report-dir", default=None, help="folder of report.md, compare.json and the PNGs (default: --out)")
    g.add_argument("--no-equal-time", dest="equal_time", action="store_false",
                   help="skip the equal wall-clock time runs")
    g.add_argument("--cost-ratios", type=_cli.positive_float, nargs="+", default=[], metavar="R",
                   help="also train the baseline for R x epochs (rounded) for each R and compare every variant "
                        "with it: equal time where a variant's epoch costs R baseline epochs, whatever this "
                        "machine's timing (e.g. 1.5 2 3)")
    g.add_argument("--max-minutes", type=_cli.positive_float, default=None, metavar="MINUTES",
                   help="stop at this many minutes of this call: a run stops between epochs, with a checkpoint, "
                        "when its next epoch (as long as the longest so far) would end past the limit, and no run "
                        "starts whose first epoch (as long as its variant's finished ones) would, except the call's "
                        "first, which always trains an epoch; the final evaluation comes on top; the same command "
                        "with --resume continues")
    g.add_argument("--resume", dest="resume_runs", action="store_true",
                   help="continue runs that an earlier call left unfinished")
    g.add_argument("--whole-runs", action="store_true",
                   help="with --max-minutes: start a run only if the finished runs of its variant say it ends before "
                        "the limit (for a machine that is given back then, where an unfinished run is lost)")
    g.add_argument("--no-anchors", dest="anchors", action="store_false",
                   help="skip the randomly initialised network's kNN accuracy")
    g.add_argument("--calibration-images", type=_cli.positive_int, default=256,
                   help="training views used to match the pixel FGSM eps")
    add_train_arguments(p, defaults=HARNESS_DEFAULTS, skip=_PER_RUN, title="trainer",
                        helps={"arch": "CIFAR ResNet-18, or a small CNN for CPUs (default: resnet18 with CUDA, "
                                       "small_cnn without)"})
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or read) every run of the comparison, then write the report; returns the report's JSON.

    A problem with the settings, the folders or earlier runs ends the program with a one-line error (status 2);
    :func:`exit_status` turns the JSON into the program's status (3 when ``--max-minutes`` left runs).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: expected distinct seeds, got {args.seeds}.")
    if args.calibration_images < 2:
        parser.error("--calibration-images: expected at least 2.")
    try:
        longer = longer_baseline_epochs(args.epochs, args.cost_ratios)
    except ValueError as err:
        parser.error(str(err).replace("cost_ratios:", "--cost-ratios:", 1))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    arch = args.arch or ("resnet18" if device.startswith("cuda") else "small_cnn")
    chosen = {name for names in args.variants for name in names}
    variants = ["baseline"] + [v for v in VARIANTS[1:] if v in chosen]
    if longer and len(variants) == 1:
        parser.error("--cost-ratios: compares variants with longer baselines, and --variants names the baseline alone; "
                     "add a variant, or train the longer baseline alone with --epochs (scripts/pool_reports.py "
                     "--longer-baselines joins it to a comparison).")
    try:
        base = config_from_args(args, arch=arch, device=device, out=args.out)
        with (_files.removed_if_left_empty(args.out), _files.removed_if_left_empty(args.report_dir or args.out),
              _files.claim_folder(args.out)):
            return _compare(args, argv, base, variants, longer)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"{parser.prog}: error: {_cli.named_by_flags(str(err), TRAIN_FIELDS)}\n")
    except KeyboardInterrupt:
        parser.exit(_cli.INTERRUPTED_STATUS, _cli.interrupted(parser.prog, args.out))


def _compare(args: argparse.Namespace, argv: list[str], base: TrainConfig, variants: list[str],
             longer: list[int]) -> dict[str, Any]:
    start = time.time()
    deadline = _cli.deadline_after(args.max_minutes, start)
    out, report_dir = Path(args.out), Path(args.report_dir or args.out)
    for folder, flag in ((out, "--out"), (report_dir, "--report-dir")):
        _files.refuse_a_file(folder, flag)
        folder.mkdir(parents=True, exist_ok=True)
    _files.refuse_other_kind(out, _files.COMPARISON)
    call = {"command": "python -m idaa_transforms.experiments.compare " + shlex.join(argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": describe_machine(base.device)}
    earlier = _files.read_jsonl(out / CALLS)  # the calls that wrote this report before
    context = ReportContext(**call, data=check_no_leak(base.dataset, base.vae), earlier_calls=earlier)
    print(context.data, flush=True)
    scheduler = Scheduler(base, out, resume=args.resume_runs, deadline=deadline, whole_runs=args.whole_runs)
    scheduler.check_finished([*(RunSpec(v, seed, args.epochs) for seed in args.seeds for v in variants),
                              *(RunSpec("baseline", seed, e) for seed in args.seeds for e in longer)])
    calibration = None  # IDAA's perturbation, measured (and the pixel FGSM matched) when a variant attacks
    if len(variants) > 1:
        calibration = _calibration(base, args.calibration_images, out, report_dir, "pixel_fgsm" in variants)
        scheduler.pixel_eps = calibration.pixel_eps
        if "pixel_fgsm" in variants:
            print(f"pixel FGSM eps matched to IDAA's mean L2 perturbation: {calibration.pixel_eps:.5f}", flush=True)
    anchors = Anchors(_random_init_knn(base, out) if args.anchors else None, published_anchors(base.dataset))
    shown = sorted({*longer, *(_earlier_longer_baselines(scheduler, args.epochs, args.seeds)
                               if len(variants) > 1 else ())})
    plan: dict[str, int] | None = None
    on_record = False  # this call goes into calls.jsonl when it first writes the report (one refused before: not)

    def write() -> dict[str, Any]:
        nonlocal on_record
        if not on_record:
            _files.atomic_write_jsonl(out / CALLS, [*earlier, call])
            on_record = True
        equal_epochs = {v: _runs(scheduler.records, v, args.epochs, args.seeds) for v in variants}
        equal_time = None
        if plan:
            equal_time = {"baseline": equal_epochs["baseline"]}
            equal_time |= {v: _runs(scheduler.records, v, e, args.seeds) for v, e in plan.items()}
        text, data = build_report(equal_epochs=equal_epochs, equal_time=equal_time, plan=plan, epochs=args.epochs,
                                  seeds=args.seeds, calibration=calibration, base=base, context=context,
                                  anchors=anchors, not_started=scheduler.not_started,
                                  longer_baselines={e: _runs(scheduler.records, "baseline", e, args.seeds)
                                                    for e in shown},
                                  unfinished=scheduler.unfinished)
        _files.atomic_write_text(report_dir / "report.md", text)
        _files.atomic_write_json(report_dir / "compare.json", data)
        write_knn_plot(equal_epochs, equal_time or {}, report_dir / "knn_curves.png", args.epochs)
        return data

    def run(spec: RunSpec) -> None:
        known = len(scheduler.records)
        record = scheduler.run(spec)
        if record is not None and record.wall_seconds is not None and len(scheduler.records) > known:
            print(f"{spec.name}: kNN {record.knn_acc:.1f}%, linear {record.linear_acc:.1f}%, "
                  f"{record.sec_per_epoch:.2f} s/epoch", flush=True)
            write()

    for seed in args.seeds:
        for variant in variants:
            run(RunSpec(variant, seed, args.epochs))
    for seed in args.seeds:  # longer baselines: their accuracies do not depend on this machine's timing
        for epochs in longer:
            run(RunSpec("baseline", seed, epochs))
    seconds = {v: scheduler.epoch_seconds(v, args.epochs) for v in variants}  # equal-epoch runs, no longer baselines
    if args.equal_time and seconds["baseline"]:
        baseline = statistics.median(seconds["baseline"])
        plan = {v: equal_time_epochs(args.epochs, baseline, statistics.median(seconds[v]))
                for v in variants[1:] if seconds[v]}
        for seed in args.seeds:
            for variant, epochs in plan.items():
                run(RunSpec(variant, seed, epochs))
    data = write()
    left = len(scheduler.not_started) + len(scheduler.unfinished)
    status = f"; {left} run(s) left for --resume" if left else ""
    if args.whole_runs and scheduler.not_started and not scheduler.trained:
        print(f"--whole-runs: no run fitted in --max-minutes {args.max_minutes:g}, so this call trained nothing; give "
              f"it more minutes, or drop --whole-runs to train the runs in parts.", file=sys.stderr, flush=True)
    print(f"report: {report_dir / 'report.md'} ({(time.time() - start) / 60:.1f} min{status})", flush=True)
    return data


def _earlier_longer_baselines(scheduler: Scheduler, epochs: int, seeds: Sequence[int]) -> list[int]:
    """The epochs of the longer baselines that earlier calls (with other ``--cost-ratios``) finished in the folder,
    read back so that the report keeps them; one made with other settings is left out, with a line that says so."""
    found = set()
    for spec in scheduler.finished("baseline", seeds):
        if spec.epochs <= epochs:
            continue
        try:
            scheduler.run(spec)  # finished: read back, never trained
        except ValueError as err:
            print(f"left out of the report: {err}", flush=True)
            continue
        found.add(spec.epochs)
    return sorted(found)


def _runs(records: Sequence[RunRecord], variant: str, epochs: int, seeds: Sequence[int]) -> list[RunRecord]:
    """The finished runs of ``variant`` at ``epochs`` epochs for ``seeds``, in seed order."""
    return sorted((r for r in records if r.variant == variant and r.epochs == epochs and r.seed in seeds),
                  key=lambda r: r.seed)


def _calibration(base: TrainConfig, images: int, out: Path, report_dir: Path, with_fgsm: bool) -> Calibration:
    """The saved calibration if it was made with the same settings, else a new one; the views picture is drawn
    again from the saved views, with the pixel FGSM's rows only ``with_fgsm``."""
    path, views, wanted = out / CALIBRATION, out / VIEWS, settings_of(base, images)
    calibration = None
    if path.is_file():
        calibration = Calibration.from_dict(_files.read_json(path, advice="delete it to calibrate again"))
        if json.loads(json.dumps(calibration.settings)) != json.loads(json.dumps(wanted)):
            raise ValueError(f"{path} was made with other settings ({calibration.settings}, now {wanted}); use "
                             f"another --out, or delete the file to calibrate again.")
    if calibration is None or not views.is_file():
        measured, rows = calibrate(base, images)  # a saved calibration is kept: its runs were made with its eps
        _files.atomic_write_bytes(views, safetensors.torch.save(rows))
        if calibration is None:
            calibration = measured
            _files.atomic_write_json(path, calibration.to_dict())
    else:
        try:
            rows = safetensors.torch.load_file(str(views))
        except safetensors.SafetensorError as err:
            raise ValueError(f"{views} is damaged ({err}); delete it to draw the views again.") from None
    write_views_grid(rows, report_dir / "views_grid.png", calibration.pixel_eps, with_fgsm=with_fgsm)
    return calibration


def _random_init_knn(base: TrainConfig, out: Path) -> float:
    """The randomly initialised network's kNN accuracy, measured once per data and architecture."""
    path = out / ANCHORS
    wanted = {k: getattr(base, k) for k in ("dataset", "data_dir", "subset", "crops_per_photo", "image_size", "arch",
                                            "knn_k", "knn_temperature")}
    if path.is_file():
        saved = _files.read_json(path, advice="delete it to measure again")
        if saved.get("settings") == wanted:
            return saved["random_init_knn"]
    value = random_init_knn(base)
    _files.atomic_write_json(path, {"random_init_knn": value, "settings": wanted})
    return value


def exit_status(data: dict[str, Any]) -> int:
    """The exit status of a comparison whose report's JSON is ``data``: 0 when every run it asked for is finished, 3
    (:data:`~idaa_transforms._cli.UNFINISHED_STATUS`) when ``--max-minutes`` left runs for ``--resume``.

    Example:
        >>> exit_status({"not_started": [], "unfinished": []}), exit_status({"not_started": ["idaa-e10-s4"],
        ...                                                                  "unfinished": []})
        (0, 3)
    """
    return _cli.UNFINISHED_STATUS if data["not_started"] or data["unfinished"] else 0


if __name__ == "__main__":
    sys.exit(exit_status(main()))
