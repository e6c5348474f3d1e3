"""Baseline vs IDAA over several seeds, same everything else; prints a mean +- std table and writes summary.json.

    python examples/compare_idaa.py --seeds 0 1 2 --out runs/compare -- --dataset photos --arch small_cnn --epochs 6

Arguments after ``--`` are the trainer's (``examples/simclr_cifar.py --help``); each run goes to
``<out>/<baseline|idaa>-s<seed>``. Already finished runs (with a results.json) are read, not rerun.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from idaa_transforms.trainers.cli import parse_args
from idaa_transforms.trainers.engine import train


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, trainer = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args(own)
    out = Path(args.out)
    rows: dict[str, list[dict]] = {"baseline": [], "idaa": []}
    for seed in args.seeds:
        for mode in rows:
            run = out / f"{mode}-s{seed}"
            extra = ["--no-idaa"] if mode == "baseline" else []
            if (run / "results.json").is_file():
                result = json.loads((run / "results.json").read_text())
            else:
                result = train(parse_args([*trainer, *extra, "--seed", str(seed), "--out", str(run)]))
            rows[mode].append(result)
            print(f"{mode} seed {seed}: knn {result['knn_acc']:.4f} linear {result['linear_acc']:.4f} "
                  f"{result['images_per_s']} images/s", flush=True)

    def stat(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"

    lines = ["| run | kNN acc. (%) | linear acc. (%) | images/s |", "| --- | --- | --- | --- |"]
    summary = {}
    for mode, results in rows.items():
        knn, lin = [r["knn_acc"] for r in results], [r["linear_acc"] for r in results]
        speed = statistics.mean(r["images_per_s"] for r in results)
        lines.append(f"| {mode} | {stat(knn)} | {stat(lin)} | {speed:.0f} |")
        summary[mode] = {"knn_acc": knn, "linear_acc": lin, "images_per_s": speed, "seeds": args.seeds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
