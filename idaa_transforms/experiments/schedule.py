"""The comparison's runs: which variants, their settings, equal-time epochs, and a scheduler that survives interruption.

Every run lives in ``<out>/<variant>-e<epochs>-s<seed>``. The :class:`Scheduler` reads a finished run instead of
training it again (after checking its settings), continues an interrupted one with ``resume``, and stops cleanly at
its deadline, between runs or between the epochs of a run, leaving a checkpoint to continue from.

Example:
    >>> spec = RunSpec("idaa", seed=2, epochs=10)
    >>> spec.name
    'idaa-e10-s2'
    >>> variant_config(TrainConfig(), spec, pixel_eps=None, out=Path("runs")).eps
    0.1
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from idaa_transforms import _files
from idaa_transforms.trainers.config import TrainConfig, changed_settings
from idaa_transforms.trainers.engine import RESULTS, RUN_FILES, TrainResult, read_run, train

__all__ = ["VARIANTS", "LABELS", "RunSpec", "CurvePoint", "RunRecord", "variant_config", "equal_time_epochs",
           "MAX_COST_RATIO", "longer_baseline_epochs", "Scheduler"]

VARIANTS = ("baseline", "idaa", "eps0", "pixel_fgsm")
LABELS = {"baseline": "baseline (two views)", "idaa": "IDAA", "eps0": "eps = 0 control",
          "pixel_fgsm": "pixel FGSM (matched L2)"}


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: a variant, a seed and a number of epochs."""

    variant: str
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        """The run's folder name."""
        return f"{self.variant}-e{self.epochs}-s{self.seed}"


class CurvePoint(NamedTuple):
    """The kNN monitor after an epoch (``None`` when not measured) and the training seconds so far."""

    epoch: int
    knn_acc: float | None
    seconds: float


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
    wall_seconds: float | None  # None: read back from an earlier invocation, not trained now
    curve: list[CurvePoint] = field(default_factory=list)

    @classmethod
    def from_result(cls, spec: RunSpec, folder: Path, result: TrainResult, wall_seconds: float | None) -> RunRecord:
        curve, total = [], 0.0
        for m in result.metrics:
            total += m.seconds
            curve.append(CurvePoint(m.epoch, None if m.knn_acc is None else 100 * m.knn_acc, total))
        return cls(spec.variant, spec.seed, spec.epochs, str(folder), 100 * result.knn_acc, 100 * result.linear_acc,
                   statistics.median(m.seconds for m in result.metrics), wall_seconds, curve)

    @property
    def epoch_seconds(self) -> list[float]:
        """Training seconds of each epoch."""
        return [b.seconds - a.seconds for a, b in zip([CurvePoint(0, None, 0.0), *self.curve], self.curve)]


def variant_config(base: TrainConfig, spec: RunSpec, pixel_eps: float | None, out: Path) -> TrainConfig:
    """The :class:`TrainConfig` of one run: ``base`` with the variant's adversary, the seed, the epochs, the folder.

    Raises:
        ValueError: an unknown variant, or ``pixel_fgsm`` without its calibrated ``pixel_eps``.
    """
    options = {"baseline": {"idaa": False}, "idaa": {"idaa": True, "adversary": "idaa"},
               "eps0": {"idaa": True, "adversary": "idaa", "eps": 0.0},
               "pixel_fgsm": {"idaa": True, "adversary": "pixel_fgsm", "pixel_eps": pixel_eps}}
    if spec.variant not in options:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {spec.variant!r}.")
    if spec.variant == "pixel_fgsm" and pixel_eps is None:
        raise ValueError("pixel_fgsm: needs the calibrated pixel_eps.")
    return dataclasses.replace(base, seed=spec.seed, epochs=spec.epochs, out=str(out / spec.name),
                               save_every=max(1, min(base.save_every, spec.epochs)), resume=False, overwrite=False,
                               stop_after=None, max_minutes=None, no_progress=True, **options[spec.variant])


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


#: The largest cost ratio a longer baseline is trained for: no variant costs a hundred baseline epochs per epoch.
MAX_COST_RATIO = 100.0


def longer_baseline_epochs(epochs: int, ratios: Sequence[float]) -> list[int]:
    """The baseline's epochs for each cost ratio ``R``: ``R * epochs`` rounded (halves up), the time a variant's
    ``epochs`` epochs take where its epoch costs ``R`` baseline epochs (in increasing order).

    Example:
        >>> longer_baseline_epochs(10, [2.0, 1.35, 1.25])
        [13, 14, 20]

    Raises:
        ValueError: a ratio that gives no more epochs than ``epochs``, one above :data:`MAX_COST_RATIO`, or two
            ratios that round to the same epochs.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}.")
    found: dict[int, float] = {}
    smallest = math.ceil(100 * (epochs + 0.5) / epochs) / 100  # two decimals, rounded up: it gives one epoch more
    for ratio in ratios:
        if not ratio <= MAX_COST_RATIO:  # NaN too
            raise ValueError(f"cost_ratios: expected ratios of at most {MAX_COST_RATIO:g}, got {ratio!r}.")
        longer = math.floor(ratio * epochs + 0.5)
        if not longer > epochs:
            raise ValueError(f"cost_ratios: {ratio!r} gives the baseline {longer} epochs, not more than the variants' "
                             f"{epochs}; give ratios of at least {smallest:.2f} for {epochs} epochs.")
        if longer in found:
            raise ValueError(f"cost_ratios: {found[longer]!r} and {ratio!r} both give the baseline {longer} epochs; "
                             f"give one of them.")
        found[longer] = ratio
    return sorted(found)


@dataclass
class Scheduler:
    """Runs (or reads back) the comparison's runs one after the other, until its ``deadline``.

    Args:
        base: the settings every run shares.
        out: the folder of the runs.
        pixel_eps: the calibrated step of the ``pixel_fgsm`` variant.
        resume: continue runs that an earlier invocation left unfinished (without it they are refused).
        deadline: a ``time.time()`` by which to stop: a running run stops between epochs, and no run starts after
            it, nor one whose first epoch would end past it as the finished runs of its variant say, except the
            call's first (see :meth:`_may_start`).
        whole_runs: start a new run only if it is expected to finish before ``deadline`` (see
            :meth:`expected_seconds`), for a machine that is given back at the deadline, where an unfinished run
            would be lost; a run without an estimate (the first of its variant) is started.
    """

    base: TrainConfig
    out: Path
    pixel_eps: float | None = None
    resume: bool = False
    deadline: float | None = None
    whole_runs: bool = False
    records: list[RunRecord] = field(default_factory=list)
    #: Whether this call has trained (an epoch of) a run yet.
    trained: bool = False
    not_started: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    @property
    def time_is_up(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def run(self, spec: RunSpec) -> RunRecord | None:
        """Train or read ``spec``; ``None`` when the deadline left it not started or unfinished.

        Raises:
            ValueError: a finished run in its folder was made with other settings, or an unfinished one is there
                and ``resume`` is off.
        """
        done = next((r for r in self.records if r.folder == str(self.out / spec.name)), None)
        if done is not None:
            return done
        cfg = variant_config(self.base, spec, self.pixel_eps, self.out)
        folder = Path(cfg.out)
        if (folder / RESULTS).is_file():
            result = _finished_run(folder, cfg)
            return self._keep(RunRecord.from_result(spec, folder, result, None))
        started = any((folder / name).exists() for name in RUN_FILES)  # killed before its first checkpoint too
        if not self._may_start(spec, started):
            self.not_started.append(spec.name)
            return None
        if started and not self.resume:
            raise ValueError(f"{folder} holds an unfinished run; pass --resume to continue it, or choose another "
                             f"--out.")
        tic = time.perf_counter()
        result = train(dataclasses.replace(cfg, resume=started), deadline=self.deadline)
        self.trained = True
        if not result.finished:
            self.unfinished.append(f"{spec.name} ({result.stopped_after} of {spec.epochs} epochs)")
            return None
        return self._keep(RunRecord.from_result(spec, folder, result, time.perf_counter() - tic))

    def check_finished(self, specs: Sequence[RunSpec]) -> None:
        """Refuse, before anything is computed, finished runs of ``specs`` that were made with other settings (the
        pixel FGSM's ``pixel_eps`` aside: :meth:`run` checks it once it is calibrated).

        Raises:
            ValueError: as :meth:`run` would, later.
        """
        for spec in specs:
            cfg = variant_config(self.base, spec, self.pixel_eps if self.pixel_eps is not None else 0.0, self.out)
            if (Path(cfg.out) / RESULTS).is_file():
                _finished_run(Path(cfg.out), cfg, ignore=() if self.pixel_eps is not None else ("pixel_eps",))

    def finished(self, variant: str, seeds: Sequence[int]) -> list[RunSpec]:
        """The runs of ``variant`` for ``seeds`` that are finished in ``out``, whatever their epochs (read from the
        folder names), in seed and epoch order."""
        specs = []
        for folder in self.out.glob(f"{variant}-e*-s*"):
            epochs, _, seed = folder.name.removeprefix(f"{variant}-e").partition("-s")
            if epochs.isdigit() and seed.isdigit() and int(seed) in seeds and (folder / RESULTS).is_file():
                specs.append(RunSpec(variant, int(seed), int(epochs)))
        return sorted(specs, key=lambda spec: (spec.seed, spec.epochs))

    def _keep(self, record: RunRecord) -> RunRecord:
        self.records.append(record)
        return record

    def _may_start(self, spec: RunSpec, started: bool) -> bool:
        """Whether to start (or continue) ``spec`` now. Without ``whole_runs`` the first run a call trains always
        starts, as the trainer always runs its first epoch, so that every call makes progress; after it, a run starts
        only if its first epoch, as long as its variant's finished epochs, ends before the deadline (the trainer stops
        a run between epochs, but only once it has timed one). With ``whole_runs`` nothing starts after the deadline,
        and a run not started yet only if all of it fits (:meth:`expected_seconds`)."""
        if self.deadline is None or (not self.whole_runs and not self.trained):
            return True
        if self.time_is_up:
            return False
        expected = self.expected_seconds(spec) if self.whole_runs and not started else self._epoch_estimate(spec)
        return expected is None or time.time() + expected <= self.deadline

    def _epoch_estimate(self, spec: RunSpec) -> float | None:
        """The median epoch of the finished runs of ``spec``'s variant; ``None`` when none has finished yet."""
        seconds = self.epoch_seconds(spec.variant)
        return statistics.median(seconds) if seconds else None

    def expected_seconds(self, spec: RunSpec) -> float | None:
        """How long ``spec`` should take, from the finished runs of its variant: the median epoch times ``spec.epochs``,
        plus the longest time a run of this call spent outside its epochs (start-up, kNN monitor, final evaluation);
        ``None`` when no run of the variant has finished yet."""
        per_epoch = self._epoch_estimate(spec)
        if per_epoch is None:
            return None
        overheads = [r.wall_seconds - r.curve[-1].seconds for r in self.records if r.wall_seconds is not None and r.curve]
        return per_epoch * spec.epochs + max(overheads, default=0.0)

    def epoch_seconds(self, variant: str, epochs: int | None = None) -> list[float]:
        """Training seconds of every epoch of every finished run of ``variant`` (of its ``epochs``-epoch runs only,
        when given: the median over the equal-epoch runs sets equal time)."""
        return [s for r in self.records if r.variant == variant and epochs in (None, r.epochs)
                for s in r.epoch_seconds]


def _finished_run(folder: Path, cfg: TrainConfig, ignore: Sequence[str] = ()) -> TrainResult:
    """The finished run in ``folder``, refused if it was made with settings other than ``cfg``'s (``ignore`` aside).

    Raises:
        ValueError: a setting differs.
    """
    result = read_run(folder)
    changed = {k: v for k, v in changed_settings(result.config, cfg).items() if k not in ignore}
    if changed:
        raise ValueError(f"{folder / RESULTS} was made with other settings "
                         f"({_files.describe_changes(changed, saved='there')}); use another --out.")
    return result
