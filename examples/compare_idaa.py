"""Baseline vs IDAA with controls over seeds: the same as ``python -m idaa_transforms.experiments.compare``.

    python examples/compare_idaa.py --seeds 0 1 2 --epochs 6 --out runs/compare

See ``--help`` and docs/EVIDENCE.md: baseline, IDAA, the eps = 0 control and a matched pixel FGSM, at equal epochs
and at equal wall-clock time, with paired tests, plots and a markdown report.
"""

import sys

from idaa_transforms.experiments.compare import exit_status, main

if __name__ == "__main__":
    sys.exit(exit_status(main()))
