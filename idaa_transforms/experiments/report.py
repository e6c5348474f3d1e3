"""The comparison's report: tables over seeds, paired tests in words, sanity anchors, and what it does not show.

:func:`build_report` turns finished runs (:class:`~idaa_transforms.experiments.schedule.RunRecord`) into the markdown
report and its JSON twin; every number in it says over how many seeds and epochs it was measured.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from idaa_transforms.data import EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS
from idaa_transforms.experiments.anchors import PublishedAnchor
from idaa_transforms.experiments.calibration import INPUTS, Calibration
from idaa_transforms.experiments.schedule import LABELS, VARIANTS, RunRecord
from idaa_transforms.experiments.stats import PairedComparison, paired_comparison, summarize
from idaa_transforms.trainers.config import TrainConfig

__all__ = ["SIGNIFICANCE", "ReportContext", "Anchors", "describe_difference", "check_no_leak", "describe_machine",
           "build_report"]

SIGNIFICANCE = 0.05


@dataclass
class ReportContext:
    """Where and how the comparison ran: the command, the date, the machine and the data of this call, and the
    earlier calls that wrote the report, whose runs it also holds (``{"command", "date", "machine"}`` each, oldest first)."""

    command: str
    date: str
    machine: str
    data: str
    earlier_calls: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Anchors:
    """What the baseline is checked against: a randomly initialised network's kNN (%) and published figures."""

    random_init_knn: float | None = None
    published: list[PublishedAnchor] = field(default_factory=list)


def describe_difference(label: str, metric: str, comparison: PairedComparison,
                        significance: float = SIGNIFICANCE) -> str:
    """One plain sentence on a paired difference (in accuracy points): distinguishable from seed noise or not.

    The difference counts as noise when ``|mean| < std`` of the per-seed differences or the paired t p-value is above
    ``significance``; otherwise the sentence also says whether the exact sign-flip test agrees. Differences without
    spread (the same in every seed) have no t-test: the sign-flip test alone decides.

    Example:
        >>> c = paired_comparison([70.0, 72.0, 69.0], [70.5, 70.0, 70.0])
        >>> describe_difference("IDAA - baseline", "kNN", c)  # doctest: +ELLIPSIS
        'IDAA - baseline, kNN: +0.17 ± 1.61 points over 3 seeds (paired t p = 0.87, sign-flip p = 1.00): not ...'
    """
    s = comparison.summary
    if s.n < 2:
        return f"{label}, {metric}: {s.mean:+.2f} points from a single seed: no spread, no test, not evidence."
    smallest = 2 / 2**s.n
    if s.std == 0:  # the t-test is undefined: only the sign-flip test speaks
        head = (f"{label}, {metric}: {s.mean:+.2f} points in each of {s.n} seeds (no spread, so no paired t-test; "
                f"sign-flip p = {comparison.sign_flip_p_value:.2f})")
        if s.mean == 0 or comparison.sign_flip_p_value > significance:
            return head + ": not distinguishable from seed noise."
        direction = "higher" if s.mean > 0 else "lower"
        return head + f": {direction} in every seed, beyond chance by the exact sign-flip test."
    head = (f"{label}, {metric}: {s.mean:+.2f} ± {s.std:.2f} points over {s.n} seeds "
            f"(paired t p = {comparison.t_p_value:.2f}, sign-flip p = {comparison.sign_flip_p_value:.2f})")
    if abs(s.mean) < s.std or not comparison.t_p_value <= significance:
        return head + ": not distinguishable from seed noise."
    direction = "higher" if s.mean > 0 else "lower"
    text = head + f": {direction}, beyond the seed-to-seed spread by the paired t-test"
    if comparison.sign_flip_p_value <= significance:
        return text + ", and the exact sign-flip test agrees."
    if smallest > significance:
        return text + (f"; the exact sign-flip test cannot confirm it with {s.n} seeds (its smallest possible "
                       f"p-value is {smallest:.3f}).")
    return text + "; the exact sign-flip test does not confirm it."


def check_no_leak(dataset: str, vae: str | None) -> str:
    """Say which data the VAE and the SSL runs use, and check the shipped VAE never saw the evaluation images.

    The shipped VAE (``weights/idaa-vae-cifar10``) was trained on the CIFAR-10 training split only: CIFAR-10 runs
    evaluate on the test split it never saw, and the ``photos`` corpus is not CIFAR at all.

    Raises:
        RuntimeError: if the 'photos' evaluation photographs overlap the VAE-training photographs of ``data``.
    """
    overlap = set(EVAL_PHOTOS) & (set(VAE_PHOTOS) | set(GRAY_PHOTOS))
    if overlap:
        raise RuntimeError(f"leak: the evaluation photographs {sorted(overlap)} are also VAE training photographs.")
    seen = ("the shipped VAE (weights/idaa-vae-cifar10) was trained on the CIFAR-10 training split only "
            "(never on a test image)")
    if vae is not None:
        seen = f"the VAE is {vae!r}, given on the command line: its training data is not checked here"
    if dataset == "photos":
        return (f"SSL training and evaluation on 'photos': crops of {', '.join(EVAL_PHOTOS)} (train and test crops "
                f"from disjoint bands of each photograph, labelled by photograph); {seen}.")
    return f"SSL training on the {dataset!r} training split, evaluation on its test split; {seen}."


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    s = summarize(values)
    return f"{s.mean:.1f} ± {s.std:.1f}" if s.n > 1 else f"{s.mean:.1f} (1 seed)"


def _p_text(p: float) -> str:
    """A p-value for the tables: three decimals, or "undefined" where the test is (one seed, or no spread)."""
    return "undefined" if p != p else f"{p:.3f}"


def _paired_json(c: PairedComparison) -> dict[str, Any]:
    """A paired comparison for compare.json: ``None`` where a figure is undefined (one seed, no spread), never NaN."""
    return {"differences": list(c.differences), "mean": c.summary.mean,
            "std": c.summary.std if c.summary.n > 1 else None,
            "t_p_value": None if c.t_p_value != c.t_p_value else c.t_p_value,
            "sign_flip_p_value": c.sign_flip_p_value}


def _section(pick: dict[str, list[RunRecord]], title: str,
             skip: Collection[str] = ()) -> tuple[list[str], list[str], dict[str, Any]]:
    """Markdown lines, sentences and JSON of one comparison (equal epochs or equal time); the pairs whose two
    variants are both in ``skip`` are left out (at equal time: the same runs as at equal epochs)."""
    lines = [f"### {title}", "", "| variant | epochs | seeds | kNN acc. (%) | linear acc. (%) | s / epoch (median) |",
             "| --- | --- | --- | --- | --- | --- |"]
    data: dict[str, Any] = {"variants": {}, "paired": []}
    for variant, runs in pick.items():
        if not runs:
            continue
        sec = statistics.median(s for r in runs for s in r.epoch_seconds)
        lines.append(f"| {LABELS[variant]} | {runs[0].epochs} | {len(runs)} | {_fmt([r.knn_acc for r in runs])} | "
                     f"{_fmt([r.linear_acc for r in runs])} | {sec:.2f} |")
        data["variants"][variant] = {"epochs": runs[0].epochs, "seeds": [r.seed for r in runs],
                                     "knn_acc": [r.knn_acc for r in runs], "linear_acc": [r.linear_acc for r in runs],
                                     "sec_per_epoch": [r.sec_per_epoch for r in runs]}
    pairs = [(v, "baseline") for v in VARIANTS[1:]] + [("idaa", "eps0"), ("idaa", "pixel_fgsm")]
    table = ["", "Paired differences (percentage points, per seed in seed order; p-values two-sided):", "",
             "| comparison | metric | mean ± std | per seed | paired t p | sign-flip p |",
             "| --- | --- | --- | --- | --- | --- |"]
    sentences = []
    for a, b in pairs:
        if a in skip and b in skip:
            continue
        runs_a, runs_b = {r.seed: r for r in pick.get(a, [])}, {r.seed: r for r in pick.get(b, [])}
        seeds = sorted(set(runs_a) & set(runs_b))
        if not seeds:
            continue
        label = f"{LABELS[a]} - {LABELS[b]}"
        for metric, key in (("kNN", "knn_acc"), ("linear", "linear_acc")):
            c = paired_comparison([getattr(runs_a[s], key) for s in seeds], [getattr(runs_b[s], key) for s in seeds])
            per_seed = ", ".join(f"{d:+.1f}" for d in c.differences)
            spread = f" ± {c.summary.std:.2f}" if c.summary.n > 1 else " (1 seed)"
            table.append(f"| {label} | {metric} | {c.summary.mean:+.2f}{spread} | {per_seed} | "
                         f"{_p_text(c.t_p_value)} | {c.sign_flip_p_value:.3f} |")
            sentences.append(describe_difference(label, metric, c))
            data["paired"].append({"variant": a, "against": b, "metric": key, "seeds": seeds, **_paired_json(c)})
    return lines + (table if len(table) > 5 else []), sentences, data


#: Variants whose epochs cost within this fraction of each other cost the same for equal time.
SAME_COST = 0.05


def _rounding_caveats(plan: dict[str, int], equal_epochs: dict[str, list[RunRecord]]) -> list[str]:
    """Warn about equal-time pairs of variants that cost the same per epoch but got different E' by rounding: their
    difference then is mostly the extra epochs, not the variants."""
    cost = {v: statistics.median(s for r in equal_epochs[v] for s in r.epoch_seconds) for v in plan}
    notes = []
    for a, b in (("idaa", "eps0"), ("idaa", "pixel_fgsm")):
        if a not in plan or b not in plan or plan[a] == plan[b]:
            continue
        if abs(cost[a] - cost[b]) <= SAME_COST * max(cost[a], cost[b]):
            notes.append(f"{LABELS[a]} and {LABELS[b]} cost the same per epoch within {SAME_COST:.0%} ({cost[a]:.2f} "
                         f"and {cost[b]:.2f} s) but got E' = {plan[a]} and {plan[b]} by rounding: at equal time their "
                         f"difference is mostly that of the epoch counts, not evidence about the variants.")
    return ["", *notes] if notes else []


def _longer_baseline_lines(equal_epochs: dict[str, list[RunRecord]], longer: dict[int, list[RunRecord]],
                           epochs: int) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Markdown lines, sentences and JSON of every variant's ``epochs``-epoch runs against the baseline trained
    longer: equal time at a given cost ratio, whatever this machine's timing."""
    lines = ["", "### Against longer baselines: equal time at a given cost ratio", "",
             f"Each variant's {epochs}-epoch runs against the baseline trained for more epochs, with a full "
             f"schedule of its own: R = baseline epochs / {epochs}, and the comparison is the one at equal wall-clock "
             f"time wherever one epoch of the variant costs R baseline epochs. Unlike the equal-time runs, it does "
             f"not depend on the timing of the machine it ran on. The baseline's accuracies are over the paired "
             f"seeds.", "",
             "| R | baseline epochs | baseline kNN / linear (%) | comparison | seeds "
             "| kNN: mean ± std (t p; sign-flip p) | linear: mean ± std (t p; sign-flip p) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    sentences: list[str] = []
    data: list[dict[str, Any]] = []
    for baseline_epochs, runs in sorted(longer.items()):
        ratio = baseline_epochs / epochs
        baseline = {r.seed: r for r in runs}
        for variant in VARIANTS[1:]:
            mine = {r.seed: r for r in equal_epochs.get(variant, [])}
            seeds = sorted(set(mine) & set(baseline))
            if not seeds:
                continue
            label = f"{LABELS[variant]} ({epochs} epochs) - baseline ({baseline_epochs} epochs, R = {ratio:.2f})"
            paired = [baseline[s] for s in seeds]
            cells = [f"{_fmt([r.knn_acc for r in paired])} / {_fmt([r.linear_acc for r in paired])}"]
            for metric, key in (("kNN", "knn_acc"), ("linear", "linear_acc")):
                c = paired_comparison([getattr(mine[s], key) for s in seeds],
                                      [getattr(baseline[s], key) for s in seeds])
                spread = f" ± {c.summary.std:.2f}" if c.summary.n > 1 else ""
                cells.append(f"{c.summary.mean:+.2f}{spread} ({_p_text(c.t_p_value)}; {c.sign_flip_p_value:.3f})")
                sentences.append(describe_difference(label, metric, c))
                data.append({"variant": variant, "ratio": ratio, "baseline_epochs": baseline_epochs, "metric": key,
                             "seeds": seeds, **_paired_json(c)})
            lines.append(f"| {ratio:.2f} | {baseline_epochs} | {cells[0]} | {LABELS[variant]} - baseline | "
                         f"{len(seeds)} | {cells[1]} | {cells[2]} |")
    return (lines if data else []), sentences, data


def _anchor_lines(anchors: Anchors, baseline: list[RunRecord], base: TrainConfig) -> list[str]:
    """The baseline beside a random network and the published figures."""
    if anchors.random_init_knn is None and not anchors.published:
        return []
    lines = ["", "### Sanity anchors", "", "| what | epochs | kNN acc. (%) | linear acc. (%) |",
             "| --- | --- | --- | --- |"]
    if baseline:
        seeds = f"{len(baseline)} seed" + ("s" if len(baseline) != 1 else "")
        lines.append(f"| this baseline ({base.arch}, batch {base.batch_size}, {seeds}) | "
                     f"{baseline[0].epochs} | {_fmt([r.knn_acc for r in baseline])} | "
                     f"{_fmt([r.linear_acc for r in baseline])} |")
    if anchors.random_init_knn is not None:
        lines.append(f"| randomly initialised {base.arch}, same data, no training | 0 | "
                     f"{anchors.random_init_knn:.1f} | - |")
    for a in anchors.published:
        batch = f", batch {a.batch_size}" if a.batch_size else ""
        knn, linear = (f"{a.accuracy:.1f}", "-") if a.metric == "kNN" else ("-", f"{a.accuracy:.1f}")
        lines.append(f"| SimCLR ResNet-18, {a.source} ([source]({a.url})){batch} | {a.epochs} | {knn} | {linear} |")
    if anchors.published:
        lines += ["", "The published figures use the full training set, ResNet-18 and their own epochs and batch: a "
                      "baseline far below them at a matched budget is a trainer bug to find before any comparison "
                      "is quoted; at a smaller budget (fewer epochs, a subset, a small CNN) it is expected to be "
                      "lower."]
    return lines


def _earlier_call_lines(calls: Sequence[dict[str, str]]) -> list[str]:
    """The earlier calls that wrote this report (runs they finished are in the tables too), oldest first."""
    if not calls:
        return []
    return [f"- earlier calls that wrote this report, oldest first ({len(calls)}):",
            *(f"  - `{c['command']}` ({c['date']}, {c['machine']})" for c in calls)]


def _perturbation_lines(c: Calibration | None, variants: Sequence[str]) -> list[str]:
    """How large IDAA's perturbation is and, for the variants asked for, the eps = 0 control's and the pixel FGSM's
    matched budget."""
    if c is None:
        return []
    idaa = f"mean L2 norm per image of IDAA's perturbation {c.idaa_l2:.4f}"
    measured = f"measured once on {c.images} {INPUTS} (seed {c.seed})"
    eps0 = f"eps = 0 control's: {c.eps0_l2:.2e}" if "eps0" in variants else ""
    if "pixel_fgsm" not in variants:
        return [f"- {idaa}" + (f" ({eps0})" if eps0 else "") + f", {measured}"]
    return [f"- pixel FGSM eps = {c.pixel_eps:.5f} (L-inf, [0, 1] pixels): matches the {idaa}, {measured}; "
            f"FGSM's L2 there: {c.fgsm_l2:.4f}" + (f"; {eps0}" if eps0 else "")]


def _header(base: TrainConfig, c: Calibration | None, context: ReportContext, epochs: int, seeds: Sequence[int],
            variants: Sequence[str]) -> list[str]:
    """The report's title and its list of what ran where, on which data, with which settings."""
    subset = (f" Class-balanced subsets (fixed, seed 0) of {base.subset} training and at most {base.subset} test "
              f"images." if base.subset else "")
    return [f"# IDAA with controls: {base.method}, {base.arch}, {base.dataset}, {epochs} epoch(s), "
             f"{len(seeds)} seeds", "",
             f"- command: `{context.command}`", f"- date: {context.date}", f"- machine: {context.machine}",
             *_earlier_call_lines(context.earlier_calls),
             f"- data: {context.data}{subset}",
             f"- settings: batch {base.batch_size}, lr {base.lr}, IDAA eps {base.eps}, alpha {base.alpha}, "
             f"{base.attack_steps} attack step(s), dual BatchNorm {base.dual_bn}, amp {base.amp}, seeds "
             f"{', '.join(map(str, seeds))}" + (f", {base.crops_per_photo} crops per photograph" if
                                                 base.dataset == "photos" else ""),
             *_perturbation_lines(c, variants),
             "- evaluation: kNN monitor and linear probe on frozen, L2-normalised backbone features of the test split",
             "- every table row says how many seeds and epochs its numbers have; a variant with fewer seeds than "
             "asked for is incomplete", "", "## Results", ""]


def build_report(*, equal_epochs: dict[str, list[RunRecord]], equal_time: dict[str, list[RunRecord]] | None,
                 plan: dict[str, int] | None, epochs: int, seeds: Sequence[int], calibration: Calibration | None,
                 base: TrainConfig, context: ReportContext, anchors: Anchors | None = None,
                 longer_baselines: dict[int, list[RunRecord]] | None = None, plan_by_calls: bool = False,
                 not_started: Sequence[str] = (), unfinished: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The markdown report and its JSON twin, from finished runs only.

    Args:
        equal_epochs: the finished runs at ``epochs`` epochs, by variant (in seed order), with every variant asked
            for as a key (an empty list when none has finished).
        equal_time: the equal wall-clock time runs by variant (the baseline's are its equal-epoch runs), or ``None``.
        plan: the equal-time epochs of each variant, or ``None``.
        epochs, seeds: what was asked for.
        calibration: IDAA's measured perturbation and the matched pixel FGSM budget (``None``: baseline only).
        base: the settings every run shares.
        context: command, date, machine and data.
        anchors: the baseline's sanity anchors.
        longer_baselines: the finished baseline runs trained for more than ``epochs`` epochs, by their epochs (in
            seed order): each variant's equal-epoch runs are compared with them (equal time at a given cost ratio).
        plan_by_calls: the runs come from several calls, each of which planned ``plan`` from its own timing (a
            pooled report), so the report does not derive ``plan`` from the medians of these runs.
        not_started, unfinished: runs the time limit left out or stopped (resumable with ``--resume``).
    """
    anchors = anchors or Anchors()
    c = calibration
    longer_baselines = longer_baselines or {}
    all_runs = [*{r.folder: r for runs in [*equal_epochs.values(), *(equal_time or {}).values(),
                                           *longer_baselines.values()]
                  for r in runs}.values()]
    with_fgsm = "pixel_fgsm" in equal_epochs
    lines = _header(base, c, context, epochs, seeds, list(equal_epochs))
    sec_lines, sentences, data_epochs = _section(equal_epochs, f"Equal epochs ({epochs})")
    lines += sec_lines
    lines += _anchor_lines(anchors, equal_epochs.get("baseline", []), base)
    data: dict[str, Any] = {"context": dataclasses.asdict(context), "calibration": None if c is None else c.to_dict(),
                            "config": base.to_dict(), "epochs": epochs, "seeds": list(seeds),
                            "equal_epochs": data_epochs, "equal_time_plan": plan,
                            "anchors": {"random_init_knn": anchors.random_init_knn,
                                        "published": [dataclasses.asdict(a) for a in anchors.published]},
                            "runs": [dataclasses.asdict(r) for r in all_runs],
                            "not_started": list(not_started), "unfinished": list(unfinished)}
    longer_lines, longer_sentences, data["longer_baselines"] = _longer_baseline_lines(equal_epochs,
                                                                                      longer_baselines, epochs)
    time_sentences: list[str] = []
    if plan and equal_time is not None:
        baseline_sec = statistics.median(s for r in equal_epochs.get("baseline", []) for s in r.epoch_seconds)
        plan_text = ", ".join(
            f"{LABELS[v]} {e} ({statistics.median(s for r in equal_epochs[v] for s in r.epoch_seconds):.2f} s "
            f"per epoch)" for v, e in plan.items())
        if plan_by_calls:  # the medians below are of the pooled runs: they need not give the E' that were planned
            planned = ", ".join(f"{LABELS[v]} {e}" for v, e in plan.items())
            lines += ["", f"Equal wall-clock time: every pooled call planned the same E' from its own seconds per "
                          f"epoch (E' = max(1, round({epochs} x baseline s / variant s)), each run with a full "
                          f"schedule of its own): {planned}. The seconds per epoch in the tables are medians over "
                          f"the pooled runs, made on machines of different speeds.", ""]
        else:
            lines += ["", f"Equal wall-clock time: each variant gets E' = max(1, round({epochs} x {baseline_sec:.2f} "
                          f"s / its s per epoch)) epochs, with the medians over every epoch of the equal-epoch runs, "
                          f"and a full schedule of its own: {plan_text}.", ""]
        same = {"baseline", *(v for v, e in plan.items() if e == epochs)}  # their equal-time runs are the same runs
        if same >= set(plan):
            lines += [f"Every variant's E' is {epochs}: the equal-time runs are the equal-epoch runs, and the "
                      f"comparison above is the equal-time comparison too."]
        else:
            sec_lines, time_sentences, data["equal_time"] = _section(equal_time, "Equal wall-clock time", skip=same)
            lines += sec_lines
            if len(same) > 1:
                lines += ["", f"Pairs of variants whose E' are both {epochs} ("
                              + ", ".join(LABELS[v] for v in VARIANTS if v in same)
                              + ") are the equal-epoch pairs above, not repeated here."]
            lines += _rounding_caveats(plan, equal_epochs)
    lines += longer_lines
    lines += ["", "## What this does and does not show", "",
              _conclusion(sentences, time_sentences, longer_sentences, _paired_seed_counts(data), calibration,
                          epochs, base, list(equal_epochs))]
    if not_started or unfinished:
        lines += ["", "Not finished when the time limit came (continue with the same command and `--resume`): "
                      + ", ".join([*unfinished, *(f"{name} (not started)" for name in not_started)]) + "."]
    lines += ["", "## Runs", "", "| variant | seed | epochs | kNN (%) | linear (%) | s / epoch | folder |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(all_runs, key=lambda r: (VARIANTS.index(r.variant), r.epochs, r.seed)):
        lines.append(f"| {r.variant} | {r.seed} | {r.epochs} | {r.knn_acc:.1f} | {r.linear_acc:.1f} | "
                     f"{r.sec_per_epoch:.2f} | {Path(r.folder).name} |")
    pictures = "`knn_curves.png` (kNN accuracy per epoch, mean and min-max over seeds)"
    if c is not None:
        pictures += (" and `views_grid.png` (x, G(x), R(x), x_adv and amplified differences for IDAA"
                     + (" and pixel FGSM)" if with_fgsm else ")"))
    lines += ["", f"Pictures: {pictures}."]
    return "\n".join(lines) + "\n", data


def _paired_seed_counts(data: dict[str, Any]) -> list[int]:
    """How many seeds each paired comparison of a report's JSON has (equal epochs, equal time, longer baselines)."""
    paired = [*data["equal_epochs"]["paired"], *data.get("equal_time", {}).get("paired", []),
              *data["longer_baselines"]]
    return [len(p["seeds"]) for p in paired]


def _conclusion(sentences: list[str], time_sentences: list[str], longer_sentences: list[str],
                paired_seed_counts: Sequence[int], calibration: Calibration | None, epochs: int, base: TrainConfig,
                variants: Sequence[str]) -> str:
    """The plain paragraph: every paired result in words, then what the setup cannot show."""
    if not sentences:
        return "No paired comparison is available yet (the baseline or the variants have no finished runs)."
    every = sentences + time_sentences + longer_sentences
    noise = sum("not distinguishable" in s or "single seed" in s for s in every)
    total = len(every)
    parts = ["At equal epochs: " + " ".join(sentences)]
    if time_sentences:
        parts.append("At equal wall-clock time: " + " ".join(time_sentences))
    if longer_sentences:
        parts.append("Against longer baselines (equal time where a variant's epoch costs R baseline epochs): "
                     + " ".join(longer_sentences))
    parts.append(f"{noise} of {total} paired differences are not distinguishable from seed noise.")
    fewest = min(paired_seed_counts)
    smallest = 2 / 2 ** fewest
    if smallest > SIGNIFICANCE:
        which = ("no result here is" if fewest == max(paired_seed_counts) else
                 f"no comparison over {fewest} seeds (the fewest here) is")
        parts.append(f"With {fewest} paired seeds the exact sign-flip test cannot reach p < {SIGNIFICANCE} (its floor "
                     f"is {smallest:.3f}), so {which} significant by that test whatever the numbers.")
    parts.append(f"This is one dataset ({base.dataset}), one architecture ({base.arch}), one method ({base.method}) "
                 f"and {epochs} epochs: it does not show how the differences behave at other scales or on other "
                 f"data.")
    if "pixel_fgsm" in variants and calibration is not None:
        parts.append(f"The pixel FGSM budget matches IDAA's mean L2 perturbation at initialisation "
                     f"({calibration.idaa_l2:.3f} per image), not during training, when IDAA's perturbation may grow "
                     f"or shrink.")
    if "eps0" in variants:
        parts.append("The eps = 0 control isolates the attack from the extra loss term and its cost: IDAA minus "
                     "eps = 0 is the effect of the latent attack itself.")
    return " ".join(parts)


def describe_machine(device: str) -> str:
    """CPU model and cores, OS, Python, torch and GPU, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text + f"; device {device}"
