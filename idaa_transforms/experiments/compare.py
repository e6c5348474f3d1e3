"""What IDAA buys, with controls: one command that trains, evaluates and reports.

    python -m idaa_transforms.experiments.compare                       # photos, 5 seeds, all variants
    python -m idaa_transforms.experiments.compare --seeds 0 1 2 --epochs 6 --out runs/compare

Four variants are trained on the same data, with the same seeds and the same number of epochs
(:func:`idaa_transforms.trainers.engine.train`, in this process, one after the other):

* ``baseline``: two views, ``L(v1, v2)``;
* ``idaa``: the paper's loss ``L(v1, v2) + alpha * L(v1, x_adv)``, ``x_adv`` from the VAE's latent space;
* ``eps0``: the same third view through the VAE decomposition with no attack step (IDAA with ``eps = 0``: the same
  code path and cost, so ``x_adv`` is ``v1`` reassembled as ``G(v1) + R(v1)``);
* ``pixel_fgsm``: a one-step pixel-space FGSM view with the same strength budget: its ``eps`` gives the same mean L2
  norm per image as IDAA's perturbation, measured once on training views with a fresh encoder
  (:func:`~idaa_transforms.pixel_fgsm.matched_pixel_eps`).

Each run is evaluated by kNN and a linear probe on frozen features. Because IDAA makes an epoch more expensive, every
non-baseline variant is also trained at equal wall-clock time: an extra set of runs, with their own full schedule
and ``E' = max(1, round(E * baseline_seconds_per_epoch / variant_seconds_per_epoch))`` epochs, same seeds
(``--no-equal-time`` skips them). Paired differences against the baseline get a paired t-test and an exact sign-flip
test (:mod:`idaa_transforms.experiments.stats`).

Outputs (in ``--report-dir``, default ``--out``): ``report.md`` (tables, p-values, seconds per epoch, the command,
machine, date, data, and a paragraph on what the numbers do and do not show), ``compare.json``, ``knn_curves.png``
and ``views_grid.png``. Runs go to ``<out>/<variant>-e<epochs>-s<seed>``; a run whose ``results.json`` exists is
read, not retrained, and the report is rewritten after every run, so an interrupted comparison keeps what it has.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from idaa_transforms._cli import HelpFormatter
from idaa_transforms.data import DATASETS, EVAL_PHOTOS, GRAY_PHOTOS, VAE_PHOTOS
from idaa_transforms.pixel_fgsm import PixelFGSM, matched_pixel_eps
from idaa_transforms.experiments.stats import PairedComparison, paired_comparison, summarize
from idaa_transforms.trainers.engine import METRICS, RESULTS, TrainConfig, load_split, train
from idaa_transforms.trainers.methods import METHODS
from idaa_transforms.trainers.models import ARCHS

__all__ = ["VARIANTS", "LABELS", "RunRecord", "equal_time_epochs", "describe_difference", "check_no_leak",
           "variant_config", "calibrate", "build_report", "main"]

VARIANTS = ("baseline", "idaa", "eps0", "pixel_fgsm")
LABELS = {"baseline": "baseline (two views)", "idaa": "IDAA", "eps0": "eps = 0 control",
          "pixel_fgsm": "pixel FGSM (matched L2)"}
#: Settings that may differ between a finished run and the configuration asking for it without changing the result.
_IRRELEVANT = {"out", "device", "no_progress", "workers", "data_dir", "download", "resume", "save_every",
               "stop_after"}
SIGNIFICANCE = 0.05


# -- pure logic (tested on known numbers) -------------------------------------------------------------------------
def equal_time_epochs(epochs: int, baseline_sec_per_epoch: float, variant_sec_per_epoch: float) -> int:
    """Epochs that give a variant the wall-clock time of ``epochs`` baseline epochs: ``max(1, round(E * b / v))``.

    Example:
        >>> equal_time_epochs(10, 2.0, 5.0)
        4
        >>> equal_time_epochs(3, 1.0, 100.0)
        1
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}.")
    for name, value in (("baseline_sec_per_epoch", baseline_sec_per_epoch),
                        ("variant_sec_per_epoch", variant_sec_per_epoch)):
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{name}: expected a finite number of seconds > 0, got {value!r}.")
    return max(1, round(epochs * baseline_sec_per_epoch / variant_sec_per_epoch))


def describe_difference(label: str, metric: str, comparison: PairedComparison,
                        significance: float = SIGNIFICANCE) -> str:
    """One plain sentence on a paired difference (in accuracy points): distinguishable from seed noise or not.

    The difference counts as noise when ``|mean| < std`` of the per-seed differences or the paired t p-value is above
    ``significance``; otherwise the sentence also says whether the exact sign-flip test agrees.

    Example:
        >>> c = paired_comparison([70.0, 72.0, 69.0], [70.5, 70.0, 70.0])
        >>> describe_difference("IDAA - baseline", "kNN", c)  # doctest: +ELLIPSIS
        'IDAA - baseline, kNN: +0.17 ± 1.61 points over 3 seeds (paired t p = 0.87, sign-flip p = 1.00): not ...'
    """
    s = comparison.summary
    head = (f"{label}, {metric}: {s.mean:+.2f} ± {s.std:.2f} points over {s.n} seeds "
            f"(paired t p = {comparison.t_p_value:.2f}, sign-flip p = {comparison.sign_flip_p_value:.2f})")
    if s.n < 2:
        return f"{label}, {metric}: {s.mean:+.2f} points from a single seed: no spread, no test, not evidence."
    if abs(s.mean) < s.std or not comparison.t_p_value <= significance:
        return head + ": not distinguishable from seed noise."
    direction = "higher" if s.mean > 0 else "lower"
    text = head + f": {direction}, beyond the seed-to-seed spread by the paired t-test"
    smallest = 2 / 2**s.n
    if comparison.sign_flip_p_value <= significance:
        return text + ", and the exact sign-flip test agrees."
    if smallest > significance:
        return text + (f"; the exact sign-flip test cannot confirm it with {s.n} seeds (its smallest possible "
                       f"p-value is {smallest:.3f}).")
    return text + "; the exact sign-flip test does not confirm it."


def check_no_leak(dataset: str, vae: str | None) -> str:
    """Check that the evaluation images were never seen by the VAE; returns a sentence saying which data is used.

    Raises:
        RuntimeError: if the 'photos' evaluation photographs overlap the shipped VAE's training photographs.
    """
    vae_photos = set(VAE_PHOTOS) | set(GRAY_PHOTOS)
    overlap = set(EVAL_PHOTOS) & vae_photos
    if overlap:
        raise RuntimeError(f"leak: the evaluation photographs {sorted(overlap)} are also VAE training photographs.")
    seen = (f"the shipped VAE (weights/idaa-vae-photo32) was trained on crops of {', '.join(VAE_PHOTOS)} and the "
            f"greyscale {', '.join(GRAY_PHOTOS)}")
    if vae is not None:
        seen = f"the VAE is {vae!r}, given on the command line: its training data is not checked here"
    if dataset == "photos":
        return (f"SSL training and evaluation on 'photos': crops of {', '.join(EVAL_PHOTOS)} (train and test crops "
                f"from disjoint bands of each photograph, labelled by photograph); {seen}; the two sets of "
                f"photographs are disjoint (checked).")
    return f"SSL training and evaluation on {dataset!r}; {seen}."


# -- runs ---------------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """A finished run: its settings, accuracies (%) and timing, read back from its folder."""

    variant: str
    seed: int
    epochs: int
    folder: str
    knn_acc: float
    linear_acc: float
    sec_per_epoch: float  # the median over its epochs: robust to a busy machine's spikes
    wall_seconds: float | None
    curve: list[tuple[int, float | None, float]] = field(default_factory=list)  # (epoch, kNN %, cumulative s)


def variant_config(base: TrainConfig, variant: str, seed: int, epochs: int, pixel_eps: float | None,
                   out: Path) -> TrainConfig:
    """The :class:`TrainConfig` of one run of ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}.")
    options: dict[str, Any] = {"baseline": {"idaa": False}, "idaa": {"idaa": True, "adversary": "idaa"},
                               "eps0": {"idaa": True, "adversary": "idaa", "eps": 0.0}}.get(variant, {})
    if variant == "pixel_fgsm":
        if pixel_eps is None:
            raise ValueError("pixel_fgsm: needs the calibrated pixel_eps.")
        options = {"idaa": True, "adversary": "pixel_fgsm", "pixel_eps": pixel_eps}
    return dataclasses.replace(base, seed=seed, epochs=epochs, out=str(out / f"{variant}-e{epochs}-s{seed}"),
                               save_every=epochs, resume=False, stop_after=None, no_progress=True, **options)


def _read_run(cfg: TrainConfig, variant: str, wall_seconds: float | None) -> RunRecord:
    folder = Path(cfg.out)
    results = json.loads((folder / RESULTS).read_text())
    rows = [json.loads(line) for line in (folder / METRICS).read_text().splitlines() if line.strip()]
    curve, total = [], 0.0
    for row in rows:
        total += row["seconds"]
        curve.append((row["epoch"], None if row["knn_acc"] is None else 100 * row["knn_acc"], total))
    return RunRecord(variant, cfg.seed, cfg.epochs, str(folder), 100 * results["knn_acc"],
                     100 * results["linear_acc"], statistics.median(r["seconds"] for r in rows), wall_seconds, curve)


def run_or_load(cfg: TrainConfig, variant: str) -> RunRecord:
    """Train ``cfg`` unless ``<out>/results.json`` exists (then check it was made with the same settings)."""
    path = Path(cfg.out) / RESULTS
    if path.is_file():
        saved = json.loads(path.read_text())["args"]
        wanted = dataclasses.asdict(cfg)
        changed = {k: (saved.get(k), v) for k, v in wanted.items() if k not in _IRRELEVANT and saved.get(k) != v}
        if changed:
            raise ValueError(f"{path} was made with other settings (name: (found, wanted)): {changed}; "
                             f"use another --out.")
        return _read_run(cfg, variant, None)
    tic = time.perf_counter()
    train(cfg)
    return _read_run(cfg, variant, time.perf_counter() - tic)


#: Settings the matched pixel eps depends on; a saved calibration is reused only if they are unchanged.
_CALIBRATION_SETTINGS = ("method", "dataset", "crops_per_photo", "image_size", "arch", "vae", "eps", "attack_steps",
                         "temperature", "dual_bn", "proj_hidden", "proj_dim")


# -- calibration and the views grid -------------------------------------------------------------------------------
@torch.no_grad()
def calibrate(base: TrainConfig, n_images: int = 256, seed: int = 0) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Measure IDAA's perturbation on training views with a fresh encoder; the matched pixel FGSM ``eps``.

    Returns the calibration record (``pixel_eps``, mean L2 norms of the IDAA and eps = 0 perturbations, ...) and the
    tensors of the grid (``x, identity, residual, idaa, fgsm`` for a batch of raw training crops).
    """
    from idaa_transforms.bn import convert_to_dual_bn
    from idaa_transforms.trainers.augment import simclr_views
    from idaa_transforms.trainers.methods import build_method
    from idaa_transforms.transform import IDAATransform

    device = torch.device(base.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images, _ = load_split(base, train=True)
    images = images.float().div(255) if images.dtype == torch.uint8 else images
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(images.shape[0], generator=generator)[:n_images]
    x = images[pick].to(device)
    torch.manual_seed(seed)
    model = build_method(base.method, base.arch, hidden_dim=base.proj_hidden, proj_dim=base.proj_dim,
                         temperature=base.temperature, momentum=base.byol_momentum)
    if base.dual_bn:
        convert_to_dual_bn(model)
    model.to(device).train()  # a throw-away model: its BatchNorm statistics may move

    def attack(transform: IDAATransform | PixelFGSM, inputs: Tensor) -> Tensor:
        return model.adversarial_view(transform, inputs, model(inputs))

    def idaa_with(eps: float) -> IDAATransform:
        return IDAATransform.from_pretrained(base.vae, encoder=getattr(model, "encoder", None), eps=eps,
                                             steps=base.attack_steps, temperature=base.temperature,
                                             use_adversarial_bn=base.dual_bn, map_location=device)

    idaa, idaa0 = idaa_with(base.eps), idaa_with(0.0)
    views = simclr_views(base.image_size)(x)  # what the attack sees in training
    x_adv, x_adv0 = attack(idaa, views), attack(idaa0, views)
    pixel_eps = matched_pixel_eps(views, x_adv)
    fgsm = PixelFGSM(encoder=getattr(model, "encoder", model), eps=pixel_eps, temperature=base.temperature,
                     use_adversarial_bn=base.dual_bn)
    x_fgsm = attack(fgsm, views)

    def l2(a: Tensor, b: Tensor) -> float:
        return float((a - b).flatten(1).norm(dim=1).mean())

    record = {
        "pixel_eps": pixel_eps, "images": int(x.shape[0]), "seed": seed, "eps": base.eps,
        "idaa_l2": l2(x_adv, views), "eps0_l2": l2(x_adv0, views), "fgsm_l2": l2(x_fgsm, views),
        "idaa_linf": float((x_adv - views).abs().amax()), "fgsm_linf": float((x_fgsm - views).abs().amax()),
        "inputs": "kornia training views of random training images, attacked with a fresh encoder (seed "
                  f"{seed}) as in a training step",
    }
    # The grid: raw training crops (not views), attacked as one batch; 8 of them, spread over the batch.
    parts = idaa.decompose(x)
    raw_idaa, raw_fgsm = attack(idaa, x), attack(fgsm, x)
    index = torch.linspace(0, x.shape[0] - 1, min(8, x.shape[0])).long()
    grid = {"x": x[index], "identity": parts.identity[index], "residual": parts.residual[index],
            "idaa": raw_idaa[index], "fgsm": raw_fgsm[index]}
    return record, {k: v.float().cpu() for k, v in grid.items()}


def write_views_grid(grid: dict[str, Tensor], path: Path, pixel_eps: float) -> None:
    """x, G(x), R(x), IDAA x_adv and its difference, pixel FGSM x_adv and its difference (same amplification)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    x = grid["x"]
    d_idaa, d_fgsm = grid["idaa"] - x, grid["fgsm"] - x
    gain = 0.5 / float(torch.maximum(d_idaa.abs().amax(), d_fgsm.abs().amax()).clamp_min(1e-8))
    rows = [("x", x), ("G(x)", grid["identity"]), ("R(x) x4", grid["residual"] * 4 + 0.5),
            ("IDAA x_adv", grid["idaa"]), (f"IDAA diff x{gain:.0f}", d_idaa * gain + 0.5),
            ("FGSM x_adv", grid["fgsm"]), (f"FGSM diff x{gain:.0f}", d_fgsm * gain + 0.5)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * x.shape[0] + 1.6, 1.2 * len(rows)))
    for ax, (name, images) in zip(axes, rows):
        strip = make_grid(images.clamp(0, 1), nrow=images.shape[0], padding=1, pad_value=1.0)
        ax.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"Same training crops: IDAA (latent eps) vs pixel FGSM (eps = {pixel_eps:.4f}, matched mean L2); "
                 "differences share one gain around grey", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_knn_plot(records: Sequence[RunRecord], path: Path, epochs: int, plan: dict[str, int] | None) -> None:
    """kNN accuracy per epoch (left, equal-epoch runs) and against training seconds (right, equal-time runs):
    the mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, variant in enumerate(VARIANTS):
        color = f"C{i}"
        for ax, runs, use_time in ((left, [r for r in records if r.variant == variant and r.epochs == epochs], False),
                                   (right, _equal_time_runs(records, variant, epochs, plan), True)):
            curves = [[p for p in r.curve if p[1] is not None] for r in runs]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            xs = [sum(c[j][2] if use_time else c[j][0] for c in curves) / len(curves) for j in range(length)]
            ys = [[c[j][1] for c in curves] for j in range(length)]
            ax.plot(xs, [sum(v) / len(v) for v in ys], color=color, marker="o", ms=3,
                    label=f"{LABELS[variant]} ({len(curves)} seeds, {runs[0].epochs} ep.)")
            ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=color, alpha=0.15)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.set(xlabel="epoch", ylabel="kNN accuracy (%)", title=f"Equal epochs ({epochs})")
    right.set(xlabel="training seconds (mean over seeds)", ylabel="kNN accuracy (%)", title="Equal wall-clock time")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Mean over seeds, band: min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _equal_time_runs(records: Sequence[RunRecord], variant: str, epochs: int,
                     plan: dict[str, int] | None) -> list[RunRecord]:
    """The equal-time runs of ``variant``: the baseline's own runs, otherwise those at the planned ``E'``."""
    if variant == "baseline":
        return [r for r in records if r.variant == variant and r.epochs == epochs]
    if plan is None or variant not in plan:
        return []
    return [r for r in records if r.variant == variant and r.epochs == plan[variant]]


def _epoch_seconds(records: Sequence[RunRecord], variant: str) -> list[float]:
    """Training seconds of every epoch of every run of ``variant`` (their median sets the equal-time epochs)."""
    seconds = []
    for r in records:
        if r.variant == variant:
            seconds += [b[2] - a[2] for a, b in zip([(0, None, 0.0), *r.curve], r.curve)]
    return seconds


# -- report -------------------------------------------------------------------------------------------------------
def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    s = summarize(values)
    return f"{s.mean:.1f} ± {s.std:.1f}" if s.n > 1 else f"{s.mean:.1f} (1 seed)"


def _section(records: Sequence[RunRecord], pick: dict[str, list[RunRecord]], title: str) -> tuple[list[str], list[str],
                                                                                                    dict[str, Any]]:
    """Markdown lines, sentences and JSON of one comparison (equal epochs or equal time)."""
    lines = [f"### {title}", "", "| variant | epochs | seeds | kNN acc. (%) | linear acc. (%) | s / epoch (median) |",
             "| --- | --- | --- | --- | --- | --- |"]
    data: dict[str, Any] = {"variants": {}, "paired": []}
    for variant, runs in pick.items():
        if not runs:
            continue
        sec = statistics.median(s for v in (variant,) for s in _epoch_seconds(runs, v))
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
        runs_a, runs_b = {r.seed: r for r in pick.get(a, [])}, {r.seed: r for r in pick.get(b, [])}
        seeds = sorted(set(runs_a) & set(runs_b))
        if not seeds:
            continue
        label = f"{LABELS[a]} - {LABELS[b]}"
        for metric, key in (("kNN", "knn_acc"), ("linear", "linear_acc")):
            c = paired_comparison([getattr(runs_a[s], key) for s in seeds], [getattr(runs_b[s], key) for s in seeds])
            per_seed = ", ".join(f"{d:+.1f}" for d in c.differences)
            table.append(f"| {label} | {metric} | {c.summary.mean:+.2f} ± {c.summary.std:.2f} | {per_seed} | "
                         f"{c.t_p_value:.3f} | {c.sign_flip_p_value:.3f} |")
            sentences.append(describe_difference(label, metric, c))
            data["paired"].append({"variant": a, "against": b, "metric": key, "seeds": seeds,
                                   "differences": list(c.differences), "mean": c.summary.mean, "std": c.summary.std,
                                   "t_p_value": c.t_p_value, "sign_flip_p_value": c.sign_flip_p_value})
    return lines + (table if len(table) > 5 else []), sentences, data


def build_report(*, records: Sequence[RunRecord], epochs: int, seeds: Sequence[int], variants: Sequence[str],
                 plan: dict[str, int] | None, calibration: dict[str, Any], base: TrainConfig, command: str,
                 machine: str, date: str, data_text: str, missing: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The markdown report and its JSON twin, from finished runs only (``missing`` lists runs not done)."""
    equal_epochs = {v: sorted((r for r in records if r.variant == v and r.epochs == epochs), key=lambda r: r.seed)
                    for v in variants}
    lines = [f"# IDAA with controls: {base.method}, {base.arch}, {base.dataset}, {epochs} epoch(s), "
             f"{len(seeds)} seeds", "",
             f"- command: `{command}`", f"- date: {date}", f"- machine: {machine}", f"- data: {data_text}",
             f"- settings: batch {base.batch_size}, lr {base.lr}, IDAA eps {base.eps}, alpha {base.alpha}, "
             f"{base.attack_steps} attack step(s), dual BatchNorm {base.dual_bn}, amp {base.amp}, seeds "
             f"{', '.join(map(str, seeds))}" + (f", {base.crops_per_photo} crops per photograph" if
                                                 base.dataset == "photos" else ""),
             f"- pixel FGSM eps = {calibration['pixel_eps']:.5f} (L-inf, [0, 1] pixels): matches the mean L2 norm "
             f"per image of IDAA's perturbation, {calibration['idaa_l2']:.4f}, measured once on "
             f"{calibration['images']} {calibration['inputs']}; FGSM's L2 there: {calibration['fgsm_l2']:.4f}; "
             f"eps = 0 control's: {calibration['eps0_l2']:.2e}",
             "- evaluation: kNN monitor and linear probe on frozen, L2-normalised backbone features of the test split",
             "", "## Results", ""]
    sec_lines, sentences, data_epochs = _section(records, equal_epochs, f"Equal epochs ({epochs})")
    lines += sec_lines
    data: dict[str, Any] = {"command": command, "date": date, "machine": machine, "data": data_text,
                            "calibration": calibration, "config": dataclasses.asdict(base), "epochs": epochs,
                            "seeds": list(seeds), "equal_epochs": data_epochs, "equal_time_plan": plan,
                            "runs": [dataclasses.asdict(r) for r in records], "missing": list(missing)}
    time_sentences: list[str] = []
    if plan is not None:
        equal_time = {v: sorted(_equal_time_runs(records, v, epochs, plan), key=lambda r: r.seed) for v in variants}
        baseline_sec = statistics.median(_epoch_seconds(records, "baseline"))
        plan_text = ", ".join(f"{LABELS[v]} {e} ({statistics.median(_epoch_seconds(equal_epochs[v], v)):.2f} s "
                              f"per epoch)" for v, e in plan.items())
        lines += ["", f"Equal wall-clock time: each variant gets E' = max(1, round({epochs} x {baseline_sec:.2f} s / "
                      f"its s per epoch)) epochs, with the medians over every epoch of the equal-epoch runs, and a "
                      f"full schedule of its own: {plan_text}. Runs whose E' equals {epochs} are the equal-epoch "
                      f"runs themselves.", ""]
        sec_lines, time_sentences, data["equal_time"] = _section(records, equal_time, "Equal wall-clock time")
        lines += sec_lines
    lines += ["", "## What this does and does not show", "", _conclusion(sentences, time_sentences, seeds,
                                                                         calibration, epochs, base)]
    if missing:
        lines += ["", f"Not run (time budget or interruption): {', '.join(missing)}."]
    lines += ["", "## Runs", "", "| variant | seed | epochs | kNN (%) | linear (%) | s / epoch | folder |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: (VARIANTS.index(r.variant), r.epochs, r.seed)):
        lines.append(f"| {r.variant} | {r.seed} | {r.epochs} | {r.knn_acc:.1f} | {r.linear_acc:.1f} | "
                     f"{r.sec_per_epoch:.2f} | {Path(r.folder).name} |")
    lines += ["", "Pictures: `knn_curves.png` (kNN accuracy per epoch, mean and min-max over seeds) and "
                  "`views_grid.png` (x, G(x), R(x), x_adv and amplified differences for IDAA and pixel FGSM)."]
    return "\n".join(lines) + "\n", data


def _conclusion(sentences: list[str], time_sentences: list[str], seeds: Sequence[int], calibration: dict[str, Any],
                epochs: int, base: TrainConfig) -> str:
    """The plain paragraph: every paired result in words, then what the setup cannot show."""
    if not sentences:
        return "No paired comparison is available yet (the baseline or the variants have no finished runs)."
    noise = sum("not distinguishable" in s or "single seed" in s for s in sentences + time_sentences)
    total = len(sentences) + len(time_sentences)
    parts = ["At equal epochs: " + " ".join(sentences)]
    if time_sentences:
        parts.append("At equal wall-clock time: " + " ".join(time_sentences))
    parts.append(f"{noise} of {total} paired differences are not distinguishable from seed noise.")
    smallest = 2 / 2 ** len(seeds)
    if smallest > SIGNIFICANCE:
        parts.append(f"With {len(seeds)} seeds the exact sign-flip test cannot reach p < {SIGNIFICANCE} (its floor is "
                     f"{smallest:.3f}), so no result here is significant by that test whatever the numbers.")
    parts.append(f"This is one dataset ({base.dataset}), one architecture ({base.arch}), one method ({base.method}) "
                 f"and {epochs} epochs: it does not show how the differences behave at the paper's scale (CIFAR, "
                 f"ResNet-18, hundreds of epochs) or on other data. The pixel FGSM budget matches IDAA's mean L2 "
                 f"perturbation at initialisation ({calibration['idaa_l2']:.3f} per image), not during training, "
                 f"when IDAA's perturbation may grow or shrink. The eps = 0 control isolates the attack from the "
                 f"extra loss term and its cost: IDAA minus eps = 0 is the effect of the latent attack itself.")
    return " ".join(parts)


def _machine(device: str) -> str:
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


# -- command line -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line; trainer options not listed keep :class:`TrainConfig`'s defaults."""
    p = argparse.ArgumentParser(prog="python -m idaa_transforms.experiments.compare",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("comparison")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    g.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="the baseline is always included")
    g.add_argument("--out", default="runs/compare", help="folder of the runs")
    g.add_argument("--report-dir", default=None, help="folder of report.md, compare.json and the PNGs (default: --out)")
    g.add_argument("--no-equal-time", dest="equal_time", action="store_false",
                   help="skip the equal wall-clock time runs")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="start no run that would end past this many minutes (estimated from finished runs)")
    g.add_argument("--calibration-images", type=int, default=256, help="training views used to match pixel eps")
    g = p.add_argument_group("trainer options (see python -m idaa_transforms.trainers --help)")
    g.add_argument("--method", default="simclr", choices=METHODS)
    g.add_argument("--dataset", default="photos", choices=DATASETS)
    g.add_argument("--data-dir", default="data")
    g.add_argument("--no-download", dest="download", action="store_false")
    g.add_argument("--crops-per-photo", type=int, default=256)
    g.add_argument("--arch", default=None, choices=ARCHS, help="default: resnet18 with CUDA, small_cnn without")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--eps", type=float, default=0.1, help="IDAA's latent radius")
    g.add_argument("--alpha", type=float, default=1.0)
    g.add_argument("--vae", default=None, help="VAE checkpoint (default: the shipped one)")
    g.add_argument("--knn-every", type=int, default=1)
    g.add_argument("--probe-steps", type=int, default=300)
    g.add_argument("--amp", action="store_true")
    g.add_argument("--device", default=None, help="default: cuda if available")
    g.add_argument("--workers", type=int, default=4)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or read) every run of the comparison, then write the report; returns the report's JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: expected distinct seeds, got {args.seeds}.")
    if args.calibration_images < 2:
        parser.error("--calibration-images: expected at least 2.")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error("--max-minutes: expected a number of minutes > 0.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    arch = args.arch or ("resnet18" if device.startswith("cuda") else "small_cnn")
    variants = ["baseline"] + [v for v in VARIANTS[1:] if v in args.variants]
    try:
        base = TrainConfig(method=args.method, dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                           crops_per_photo=args.crops_per_photo, arch=arch, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, eps=args.eps, alpha=args.alpha, vae=args.vae,
                           knn_every=args.knn_every, probe_steps=args.probe_steps, amp=args.amp, device=device,
                           workers=args.workers, out=args.out)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    report_dir = Path(args.report_dir or args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    context = {"command": "python -m idaa_transforms.experiments.compare " + shlex.join(argv),
               "machine": _machine(device), "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                   "%Y-%m-%d %H:%M UTC"), "data_text": check_no_leak(args.dataset, args.vae)}
    print(context["data_text"], flush=True)

    calibration_path = out / "calibration.json"
    calibration: dict[str, Any]
    made_with = {k: getattr(base, k) for k in _CALIBRATION_SETTINGS} | {"images": args.calibration_images}
    if calibration_path.is_file():
        calibration = json.loads(calibration_path.read_text())
        if calibration.get("settings") != made_with:
            raise ValueError(
                f"{calibration_path} was made with other settings ({calibration.get('settings')}, now {made_with}); "
                "use another --out, or delete the file to calibrate again."
            )
    else:
        calibration, grid = calibrate(base, args.calibration_images)
        calibration["settings"] = made_with
        calibration_path.write_text(json.dumps(calibration, indent=2) + "\n")
        write_views_grid(grid, report_dir / "views_grid.png", calibration["pixel_eps"])
    if not (report_dir / "views_grid.png").is_file():
        write_views_grid(calibrate(base, args.calibration_images)[1], report_dir / "views_grid.png",
                         calibration["pixel_eps"])
    print(f"pixel FGSM eps matched to IDAA's mean L2 perturbation: {calibration['pixel_eps']:.5f}", flush=True)

    records: list[RunRecord] = []
    plan: dict[str, int] | None = None
    missing: list[str] = []
    wall_per_epoch: dict[str, float] = {}

    def fits(variant: str, epochs: int) -> bool:
        if args.max_minutes is None or variant not in wall_per_epoch:
            return args.max_minutes is None or time.perf_counter() - start < 60 * args.max_minutes
        return time.perf_counter() - start + epochs * wall_per_epoch[variant] < 60 * args.max_minutes

    def do(variant: str, seed: int, epochs: int) -> None:
        cfg = variant_config(base, variant, seed, epochs, calibration["pixel_eps"], out)
        if any(Path(r.folder) == Path(cfg.out) for r in records):
            return
        if not (Path(cfg.out) / RESULTS).is_file() and not fits(variant, epochs):
            missing.append(Path(cfg.out).name)
            return
        record = run_or_load(cfg, variant)
        records.append(record)
        if record.wall_seconds is not None:
            wall_per_epoch[variant] = record.wall_seconds / record.epochs
        print(f"{Path(cfg.out).name}: kNN {record.knn_acc:.1f}%, linear {record.linear_acc:.1f}%, "
              f"{record.sec_per_epoch:.2f} s/epoch", flush=True)
        write()

    def write() -> dict[str, Any]:
        text, data = build_report(records=records, epochs=args.epochs, seeds=args.seeds, variants=variants,
                                  plan=plan, calibration=calibration, base=base, missing=missing, **context)
        (report_dir / "report.md").write_text(text)
        (report_dir / "compare.json").write_text(json.dumps(data, indent=2) + "\n")
        write_knn_plot(records, report_dir / "knn_curves.png", args.epochs, plan)
        return data

    for seed in args.seeds:
        for variant in variants:
            do(variant, seed, args.epochs)
    if args.equal_time:
        baseline = _epoch_seconds(records, "baseline")
        if baseline:
            plan = {}
            for variant in variants[1:]:
                if _epoch_seconds(records, variant):
                    plan[variant] = equal_time_epochs(args.epochs, statistics.median(baseline),
                                                      statistics.median(_epoch_seconds(records, variant)))
            for seed in args.seeds:
                for variant, epochs in plan.items():
                    do(variant, seed, epochs)
    data = write()
    print(f"report: {report_dir / 'report.md'} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    return data


if __name__ == "__main__":
    main()
