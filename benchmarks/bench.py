"""Speed of IDAA and of the reference trainer: the command line (what is timed is in ``workloads.py``).

``--suite transform`` (the default): ``IDAATransform`` against the sum of its necessary parts, a pixel FGSM and a
plain SimCLR step, over a grid of VAEs, batch sizes, image sizes, precisions and compilations.

``--suite trainer``: the trainer's plain and IDAA steps against the model-only step, the views alone (fast and
kornia), and whole epochs of the baseline, of IDAA and of the model fed by torchvision v2 on ``DataLoader`` workers.

Ratios are computed within one run; timings are medians over round-robin repeats after warm-up (on CUDA, CUDA events
after a ``torch.cuda.synchronize()``); epochs are timed end to end.

Usage (from the repository root)::

    python benchmarks/bench.py                                   # CPU defaults (small_cnn, a few minutes)
    python benchmarks/bench.py --device cuda --arch resnet18 --batch-sizes 256,512,1024 --image-sizes 32,96,224 \\
        --amp bf16,fp16 --compile transform,modules --out results/gpu
    python benchmarks/bench.py --suite trainer --device cuda --arch resnet18 --batch-sizes 512 --amp bf16 \\
        --channels-last --out results/gpu-trainer             # what ``make bench-trainer-gpu`` runs
    python benchmarks/bench.py --suite trainer --device cpu --profile --out prof   # per-op profile of the views
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

# The checkout's package and the sibling ``workloads`` module, also when run as ``python benchmarks/bench.py``.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from workloads import (  # noqa: E402  (the sibling module, also when run as a script)
    PART_KEYS,
    TRAINER_KEYS,
    BenchConfig,
    TrainerBenchConfig,
    build_trainer_workloads,
    build_workloads,
    run_config,
    run_trainer,
    views_breakdown,
)

from idaa_transforms._cli import HelpFormatter, non_negative_int, positive_float, positive_int  # noqa: E402
from idaa_transforms._files import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["plan_configs", "markdown_table", "trainer_markdown", "profile_transform", "profile_views",
           "machine_info", "parse_args", "main"]

SUITES = ("transform", "trainer")


# -- planning and reporting ---------------------------------------------------------------------------------------------
def plan_configs(base: BenchConfig, vaes: Sequence[str], batch_sizes: Sequence[int], image_sizes: Sequence[int],
                 amps: Sequence[str], compiles: Sequence[str]) -> list[BenchConfig]:
    """Batch-size axis at the first image size, image-size axis at the first batch size, variants at the base point.

    Order (what a time budget cuts last comes first): the first VAE's axes, its ``amps`` and ``compiles`` variants
    at the base point, then the other VAEs' axes. The shipped VAE is 32 px only: at other sizes the transform would
    mostly measure its resize, so its image-size axis is skipped.
    """
    b0, s0 = batch_sizes[0], image_sizes[0]

    def axes(vae: str) -> list[BenchConfig]:
        point = replace(base, vae=vae, batch_size=b0, image_size=s0)
        sizes = [] if vae == "shipped" else image_sizes[1:]
        return [point] + [replace(point, batch_size=b) for b in batch_sizes[1:]] + [
            replace(point, image_size=s) for s in sizes]

    first = replace(base, vae=vaes[0], batch_size=b0, image_size=s0)
    configs = axes(vaes[0])
    configs += [replace(first, amp=a) for a in amps]
    configs += [replace(first, compile=c) for c in compiles if c != "none"]
    for vae in vaes[1:]:
        configs += axes(vae)
    return configs


def _fmt_mem(record: dict[str, Any], key: str) -> str:
    memory = record.get("memory")
    if not isinstance(memory, dict) or key not in memory:
        return "n/a"
    return f"{memory[key]['peak_bytes'] / 2**20:.0f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Transform suite: one row per configuration: times in ms, ratios, peak memory (MiB, CUDA only)."""
    head = ("| config | a views | b IDAA (anchor) | b IDAA (no anchor) | c parts | d pixel FGSM | e plain | e IDAA "
            "| b/c | b/d | e_idaa/e_plain | peak MiB b / e_idaa | retained B after b |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * (head.count("|") - 3))
            continue
        ms, ratios = r["ms"], r["ratios"]
        memory = r.get("memory")
        retained = memory["b_idaa_anchor"]["retained_bytes"] if isinstance(memory, dict) else "n/a"
        lines.append(
            f"| {r['label']} | {ms['a_views']:.1f} | {ms['b_idaa_anchor']:.1f} | {ms['b_idaa_no_anchor']:.1f} "
            f"| {ms['c_parts_sum']:.1f} | {ms['d_pixel_fgsm']:.1f} | {ms['e_step_plain']:.1f} | {ms['e_step_idaa']:.1f} "
            f"| {ratios['b/c']:.3f} | {ratios['b/d']:.2f} | {ratios['e_idaa/e_plain']:.2f} "
            f"| {_fmt_mem(r, 'b_idaa_anchor')} / {_fmt_mem(r, 'e_step_idaa')} | {retained} |"
        )
    parts = ["", "Parts of c (ms): " + ", ".join(PART_KEYS), ""]
    parts.append("| config | " + " | ".join(PART_KEYS) + " |")
    parts.append("|---|" + "---|" * len(PART_KEYS))
    for r in records:
        if "error" not in r:
            parts.append(f"| {r['label']} | " + " | ".join(f"{r['ms'][k]:.1f}" for k in PART_KEYS) + " |")
    return "\n".join(lines + parts) + "\n"


def trainer_markdown(record: dict[str, Any]) -> str:
    """Trainer suite: per-call medians, the ratios against their targets, and the timed epochs."""
    ms, ratios = record["ms"], record["ratios"]
    targets = {"plain_step/model_only": "<= 1.15", "views_fast/plain_step": "<= 0.10",
               "idaa_step/plain_step": "<= 1.35", "idaa_step/idaa_limit": "<= 1.10"}
    lines = [f"Configuration: `{record['label']}` (clock: {record['clock']})", "",
             "| workload | ms per batch | images/s |", "|---|---|---|"]
    batch = record["config"]["batch_size"]
    for key in TRAINER_KEYS:
        lines.append(f"| {key} | {ms[key]:.2f} | {batch / ms[key] * 1e3:,.0f} |")
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {targets.get(k, '')} |" for k, v in ratios.items()]
    epochs = record.get("epochs")
    if epochs:
        lines += ["", f"Epochs of {epochs['images']:,} images ({epochs['steps']} steps of {epochs['batch_size']}):", "",
                  "| training | epoch s | images/s |", "|---|---|---|"]
        for key in ("baseline", "idaa", "torchvision_v2_workers"):
            if key in epochs:
                lines.append(f"| {key} | {epochs[key]['seconds']:.2f} | {epochs[key]['images_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def profile_transform(cfg: BenchConfig, out: Path | None, calls: int = 3) -> str:
    """``torch.profiler`` table of ``IDAATransform`` (with anchor) and of the separately run parts at ``cfg``."""
    work = build_workloads(cfg)
    groups = {"idaa": ["b_idaa_anchor"], "parts": list(PART_KEYS)}
    return _profile(work.fns, groups, torch.device(cfg.device), cfg.label, out, calls)


def profile_views(cfg: TrainerBenchConfig, out: Path | None, calls: int = 5) -> str:
    """``torch.profiler`` tables of the two views of a batch, kornia's pipeline and the fast one, at ``cfg``."""
    work, _, _ = build_trainer_workloads(replace(cfg, epoch_images=0, loader_workers=0))
    groups = {"views_kornia": ["views_kornia"], "views_fast": ["views_fast"]}
    return _profile(work.fns, groups, torch.device(cfg.device), cfg.label, out, calls)


def _profile(fns: dict[str, Any], groups: dict[str, list[str]], device: torch.device, label: str,
             out: Path | None, calls: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = []
    for name, keys in groups.items():
        for key in keys:
            fns[key]()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                for key in keys:
                    fns[key]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by=sort_by, row_limit=25)
        tables.append(f"## {name}: {', '.join(keys)} x {calls} ({label})\n\n{table}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(out / f"profile_{name}.json"))
    report = "\n\n".join(tables)
    if out is not None:
        atomic_write_text(out / "profile.txt", report)
    return report


def machine_info(device: torch.device) -> dict[str, Any]:
    """Date, software versions, CPU and GPU, and the command (relative to the repository root)."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python", _relative(sys.argv[0]), *sys.argv[1:]]),
    }
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return Path(path).name


def _csv(kind: type, text: str) -> list[Any]:
    return [kind(t) for t in text.split(",") if t.strip()]


def _positive_csv(text: str) -> list[int]:
    """``argparse`` type: comma-separated positive integers."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--suite", default="transform", choices=SUITES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default=None, choices=["resnet18", "small_cnn"],
                        help="the trainers' encoder; default resnet18 on CUDA, small_cnn on CPU")
    parser.add_argument("--vaes", default=None, help="comma-separated: paper, shipped (default paper,shipped for "
                        "the transform suite, shipped for the trainer suite, the trainer's default)")
    parser.add_argument("--batch-sizes", type=_positive_csv, default=None,
                        help="comma-separated; default 256,512,1024 on CUDA, 64,32,128 on CPU "
                             "(trainer suite: the first)")
    parser.add_argument("--image-sizes", type=_positive_csv, default="32,64,96", help="comma-separated (trainer suite: the first)")
    parser.add_argument("--repeats", type=positive_int, default=None, help="default 10 on CUDA, 5 on CPU")
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--amp", default="", help="transform suite: extra autocast variants at the base point "
                        "(bf16, fp16 or both); trainer suite: the autocast of the steps (bf16, fp16 or empty)")
    parser.add_argument("--compile", default="", help="transform suite: extra variants at the base point: "
                        "transform, modules")
    parser.add_argument("--channels-last", action="store_true", help="trainer suite: channels-last model and views")
    parser.add_argument("--epoch-images", type=non_negative_int, default=None,
                        help="trainer suite: images per timed epoch (default 50000 on CUDA, 0 = none on CPU)")
    parser.add_argument("--loader-workers", type=non_negative_int, default=None,
                        help="trainer suite: DataLoader workers of the torchvision v2 alternative "
                             "(default: the CPU count, up to 16; 0 skips it)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="CPU timer: wall time, or process CPU time (use with --threads 1 on a shared machine)")
    parser.add_argument("--budget-s", type=positive_float, default=None,
                        help="transform suite: skip the remaining configurations once this many seconds have passed")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    parser.add_argument("--profile", action="store_true", help="only profile, at the first batch and image size: "
                        "the transform and its parts, or (trainer suite) the views with kornia and the fast backend")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns the records (also written under ``--out``)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as a trainer would run fp32
    arch = args.arch or ("resnet18" if cuda else "small_cnn")
    repeats = args.repeats or (10 if cuda else 5)
    batch_sizes = args.batch_sizes or _positive_csv("256,512,1024" if cuda else "64,32,128")
    out = Path(args.out) if args.out else None
    info = machine_info(device)
    print(json.dumps(info), flush=True)
    if args.suite == "trainer":
        amps = _csv(str, args.amp)
        workers = args.loader_workers if args.loader_workers is not None else min(16, os.cpu_count() or 1)
        cfg = TrainerBenchConfig(
            device=args.device, arch=arch, vae=_csv(str, args.vaes or "shipped")[0], batch_size=batch_sizes[0],
            image_size=args.image_sizes[0], amp=amps[0] if amps else None,
            channels_last=args.channels_last, repeats=repeats, warmup=args.warmup,
            epoch_images=args.epoch_images if args.epoch_images is not None else (50_000 if cuda else 0),
            loader_workers=workers)
        if args.profile:
            breakdown = views_breakdown(cfg, clock=args.clock)
            table = "| stage of one view | ms |\n|---|---|\n" + "".join(
                f"| {k} | {v:.2f} |\n" for k, v in breakdown.items())
            print(profile_views(cfg, out))
            print(table)
            if out is not None:
                write_results(out, info, [{"label": cfg.label, "config": asdict(cfg), "views_ms": breakdown}], table,
                              title="Views: stage by stage")
            return []
        record = run_trainer(cfg, clock=args.clock)
        table = trainer_markdown(record)
        print(table)
        if out is not None:
            write_results(out, info, [record], table, title="Trainer benchmark")
        return [record]

    base = BenchConfig(device=args.device, arch=arch, repeats=repeats, warmup=args.warmup)
    configs = plan_configs(base, _csv(str, args.vaes or "paper,shipped"), batch_sizes, args.image_sizes,
                           _csv(str, args.amp), _csv(str, args.compile))
    if args.profile:
        print(profile_transform(configs[0], out))
        return []
    start, records = time.perf_counter(), []
    for cfg in configs:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            records.append({"label": cfg.label, "config": asdict(cfg), "error": "skipped (time budget)"})
            print(f"{cfg.label}: skipped (time budget)", flush=True)
            continue
        try:
            record = run_config(cfg, clock=args.clock)
        except Exception as err:  # keep the other points when one fails (e.g. out of memory)
            record = {"label": cfg.label, "config": asdict(cfg), "error": f"{type(err).__name__}: {err}"[:300]}
        records.append(record)
        if "error" in record:
            print(f"{cfg.label}: {record['error']}", flush=True)
        else:
            ms, ratios = record["ms"], record["ratios"]
            print(f"{cfg.label}: b={ms['b_idaa_anchor']:.1f}ms c={ms['c_parts_sum']:.1f}ms "
                  + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()), flush=True)
        if cuda:
            torch.cuda.empty_cache()
        if out is not None:  # after every point, so that an interrupted run keeps what it measured
            write_results(out, info, records, markdown_table(records), title="IDAA benchmark")
    print(markdown_table(records))
    return records


def write_results(out: Path, info: dict[str, Any], records: list[dict[str, Any]], table: str, title: str) -> None:
    """``results.json`` (everything) and ``results.md`` (machine, command and tables) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"machine": info, "records": records})
    atomic_write_text(out / "results.md", f"# {title}\n\n```\n{json.dumps(info, indent=2)}\n```\n\n{table}")


if __name__ == "__main__":
    main()
