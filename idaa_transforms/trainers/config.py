"""The trainers' options, declared once: :class:`TrainConfig`, its choices, its validation, and the command line.

Every option is a field of :class:`TrainConfig` whose metadata carries its help text and command-line form;
:func:`add_train_arguments` turns the fields into ``argparse`` options (the trainer's CLI and the comparison harness
both use it), :func:`config_from_args` turns the parsed namespace back into a :class:`TrainConfig`, and
:func:`changed_settings` is the one check of a checkpoint's settings against the current ones.

Example:
    >>> cfg = TrainConfig(dataset="photos", arch="small_cnn", epochs=2)
    >>> cfg.lr, cfg.method
    (0.0003, 'simclr')
    >>> changed_settings(TrainConfig(epochs=2), TrainConfig(epochs=3, no_progress=True))
    {'epochs': (2, 3)}
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from idaa_transforms import _cli, _files
from idaa_transforms.data import DATASETS

__all__ = ["METHODS", "ARCHS", "DATASETS", "ADVERSARIES", "OPTIMIZERS", "SCHEDULES", "RESUME_SAFE", "TRAIN_FIELDS",
           "TrainConfig", "add_train_arguments", "config_from_args", "changed_settings"]

METHODS = ("simclr", "byol")
ARCHS = ("resnet18", "small_cnn")
ADVERSARIES = ("idaa", "pixel_fgsm")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")

#: Settings that may change between a run and its resumption without changing what it computes.
RESUME_SAFE = frozenset({"resume", "overwrite", "stop_after", "max_minutes", "save_every", "no_progress", "device",
                         "out", "download"})


# How each kind of option is typed on the command line and validated in the config: (argparse type, check, words).
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KINDS: dict[str, tuple[Callable[[str], Any], Callable[[Any], bool], str]] = {
    "positive_int": (_cli.positive_int, lambda v: _is_int(v) and v >= 1, "a positive int"),
    "non_negative_int": (_cli.non_negative_int, lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "positive": (_cli.positive_float, lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "non_negative": (_cli.non_negative_float, lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "fraction": (_cli.non_negative_float, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "device": (_cli.device_name, lambda v: v is None or _device_ok(v), "cpu, cuda, cuda:N or mps"),
    "text": (str, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
}


def _device_ok(text: str) -> bool:
    try:
        _cli.device_name(text)
    except argparse.ArgumentTypeError:
        return False
    return True


def _option(default: Any, help: str | None = None, *, group: str, kind: str | None = None,
            choices: tuple[str, ...] | None = None, flag: str | None = None, optional: bool = False,
            metavar: str | None = None) -> Any:
    """A :class:`TrainConfig` field with its command-line form.

    ``kind`` names the type (a key of ``_KINDS``); booleans are flags, ``flag`` overrides the option's name
    (``--no-idaa`` for ``idaa``); ``optional`` lets the value be ``None``.
    """
    metadata = {"help": help, "group": group, "kind": kind, "choices": choices, "flag": flag, "optional": optional,
                "metavar": metavar}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run depends on; the command line (:mod:`~idaa_transforms.trainers.cli`) builds one.

    The defaults are the IDAA paper's CIFAR SimCLR settings (Adam 3e-4, weight decay 1e-6, temperature 0.5,
    projection 512 -> 64, eps 0.1, alpha 1).

    Raises:
        ValueError: a value out of range or not among its choices (the message names the option).
    """

    # data
    dataset: str = _option("cifar10", "cifar10/cifar100/stl10 are read from (or downloaded to) --data-dir; "
                           "'imagefolder' reads <data-dir>/train/<class>/<image> and <data-dir>/test/<class>/<image> "
                           "(any image type PIL opens: PNG, JPEG, ...); 'photos' is offline (32x32 crops of five "
                           "photographs, labelled by photograph)", group="data", choices=DATASETS)
    data_dir: str = _option("data", "dataset root", group="data", kind="text")
    download: bool = _option(False, "let torchvision download CIFAR/STL-10 into --data-dir when no local copy is "
                             "found", group="data")
    subset: int | None = _option(None, "train on a class-balanced, seeded subset of N training images (and "
                                 "evaluate on N test images at most)", group="data", kind="positive_int",
                                 optional=True, metavar="N")
    crops_per_photo: int = _option(256, "'photos': crops per photograph", group="data", kind="positive_int")
    image_size: int = _option(32, "side of the training views", group="data", kind="positive_int")
    # model
    method: str = _option("simclr", group="model", choices=METHODS)
    arch: str = _option("resnet18", "CIFAR ResNet-18, or a small CNN for CPUs", group="model", choices=ARCHS)
    proj_hidden: int = _option(512, "projection head hidden size", group="model", kind="positive_int")
    proj_dim: int = _option(64, "projection size", group="model", kind="positive_int")
    temperature: float = _option(0.5, "NT-Xent temperature (SimCLR and the attack's built-in loss)", group="model",
                                 kind="positive")
    byol_momentum: float = _option(0.99, "base EMA momentum (BYOL)", group="model", kind="fraction")
    # IDAA
    idaa: bool = _option(True, "baseline: train without the adversarial view", group="IDAA", flag="--no-idaa")
    vae: str | None = _option(None, "VAE checkpoint: a Hub repo id or a local folder (default: the VAE shipped with "
                              "the package)", group="IDAA", kind="text", optional=True, metavar="ID_OR_PATH")
    eps: float = _option(0.1, "latent perturbation radius", group="IDAA", kind="non_negative")
    adversary: str = _option("idaa", "the third view: IDAA in the VAE's latent space, or a one-step pixel-space "
                             "FGSM control", group="IDAA", choices=ADVERSARIES)
    pixel_eps: float = _option(8 / 255, "L-inf step of --adversary pixel_fgsm, in [0, 1] pixel units (default: "
                               "8/255)", group="IDAA", kind="fraction")
    alpha: float = _option(1.0, "weight of L(v1, x_adv)", group="IDAA", kind="non_negative")
    attack_steps: int = _option(1, "gradient steps of the attack", group="IDAA", kind="positive_int")
    dual_bn: bool = _option(True, "share BatchNorms between clean and adversarial views", group="IDAA",
                            flag="--no-dual-bn")
    # optimisation
    epochs: int = _option(200, group="optimisation", kind="positive_int")
    batch_size: int = _option(256, "global batch size (over all processes); at least 2 per process for BatchNorm",
                              group="optimisation", kind="positive_int")
    optimizer: str = _option("adam", group="optimisation", choices=OPTIMIZERS)
    lr: float = _option(3e-4, group="optimisation", kind="positive")
    weight_decay: float = _option(1e-6, group="optimisation", kind="non_negative")
    schedule: str = _option("cosine", "per-step LR schedule", group="optimisation", choices=SCHEDULES)
    warmup_epochs: int = _option(0, group="optimisation", kind="non_negative_int")
    # evaluation
    knn_k: int = _option(200, "neighbours of the kNN monitor", group="evaluation", kind="positive_int")
    knn_temperature: float = _option(0.1, "temperature of the kNN monitor's votes", group="evaluation",
                                     kind="positive")
    knn_every: int = _option(1, "epochs between kNN evaluations", group="evaluation", kind="positive_int")
    probe_steps: int = _option(300, "L-BFGS steps of the final linear probe", group="evaluation",
                               kind="positive_int")
    # run
    amp: bool = _option(False, "bfloat16 autocast", group="run")
    device: str | None = _option(None, "cuda, cpu, cuda:1... (default: cuda if available; under torchrun "
                                 "cuda:LOCAL_RANK)", group="run", kind="device", optional=True)
    seed: int = _option(0, group="run", kind="non_negative_int")
    out: str = _option("runs/simclr", "output folder", group="run", kind="text")
    resume: bool = _option(False, "continue the run in --out from its checkpoint.pt", group="run")
    overwrite: bool = _option(False, "replace a previous run in --out (without it a fresh run there is refused)",
                              group="run")
    save_every: int = _option(10, "epochs between checkpoints", group="run", kind="positive_int")
    stop_after: int | None = _option(None, _cli.STOP_AFTER_HELP, group="run", kind="positive_int", optional=True,
                                     metavar="EPOCHS")
    max_minutes: float | None = _option(None, _cli.MAX_MINUTES_HELP, group="run", kind="positive", optional=True,
                                        metavar="MINUTES")
    no_progress: bool = _option(False, "no progress bars or per-epoch lines (the final summary is still printed)",
                                group="run")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and meta["optional"]:
                continue
            if meta["choices"] is not None:
                if value not in meta["choices"]:
                    raise ValueError(f"{f.name}: expected one of {meta['choices']}, got {value!r}.")
            elif meta["kind"] is not None:
                _, ok, words = _KINDS[meta["kind"]]
                if not ok(value):
                    raise ValueError(f"{f.name}: expected {words}, got {value!r}.")
            elif not isinstance(value, bool):
                raise ValueError(f"{f.name}: expected True or False, got {value!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size: expected at least 2 (BatchNorm needs two samples per batch), got "
                             f"{self.batch_size}.")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: {self.warmup_epochs} warm-up epochs leave none of the {self.epochs} "
                             f"epochs at the full learning rate; use fewer warm-up epochs or more epochs.")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume: give one of them (resume continues the run in --out, overwrite "
                             "replaces it).")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able data (saved in checkpoints and results)."""
        return dataclasses.asdict(self)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
#: The settings' names (each is the flag ``--<name with dashes>`` on the command lines).
TRAIN_FIELDS = tuple(_DEFAULTS)


def changed_settings(saved: Mapping[str, Any] | TrainConfig, now: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Settings of ``now`` that differ from ``saved`` (a checkpoint's or a finished run's), as ``{name: (saved,
    now)}``, ignoring :data:`RESUME_SAFE`; settings added since ``saved`` was written count as their defaults."""
    if isinstance(saved, TrainConfig):
        saved = saved.to_dict()
    return _files.changed_settings(saved, now.to_dict(), ignore=RESUME_SAFE, defaults=_DEFAULTS)


def add_train_arguments(parser: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None,
                        skip: Iterable[str] = (), helps: Mapping[str, str] | None = None,
                        title: str | None = None) -> None:
    """Add :class:`TrainConfig`'s options to ``parser``, in argument groups.

    Args:
        parser: the parser to extend.
        defaults: other defaults for some options (a harness's own); names must be fields.
        skip: fields not offered on this command line.
        helps: other help texts for some options (say what a default of ``None`` means there).
        title: a prefix of the groups' titles.

    Raises:
        ValueError: ``defaults``, ``skip`` or ``helps`` name something that is not a field.
    """
    defaults, skipped, helps = dict(defaults or {}), set(skip), dict(helps or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = (set(defaults) | skipped | set(helps)) - names
    if unknown:
        raise ValueError(f"add_train_arguments: not TrainConfig fields: {sorted(unknown)}.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skipped:
            continue
        meta = f.metadata
        name = meta["group"] if title is None else f"{title}: {meta['group']}"
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        default = defaults.get(f.name, f.default)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        text = helps.get(f.name, meta["help"])
        if f.type in ("bool", bool):
            action = "store_false" if flag.startswith("--no-") and f.name != "no_progress" else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=default, help=text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": text}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["type"] = _KINDS[meta["kind"]][0]
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of the fields present in ``args`` (others keep their defaults), with ``overrides``.

    Raises:
        ValueError: from :class:`TrainConfig`'s validation.
    """
    values = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS}
    try:
        return TrainConfig(**{**values, **overrides})
    except ValueError as err:
        raise ValueError(_cli.named_by_flags(str(err), TRAIN_FIELDS)) from None
