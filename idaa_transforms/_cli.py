"""What the command-line programs share: the help formatter, argument types that reject bad values up front, and
the two ways a long run stops early (``--stop-after`` epochs, ``--max-minutes``) with their one meaning, and the one
line a run stopped by Ctrl-C prints."""

from __future__ import annotations

import argparse
import copy
import math
import re
import time
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["ArgumentParser", "HelpFormatter", "DEVICE_TYPES", "device_name", "positive_int", "non_negative_int",
           "positive_float", "non_negative_float", "finite_float", "STOP_AFTER_HELP", "MAX_MINUTES_HELP",
           "deadline_after", "next_epoch_would_overrun", "named_by_flags", "INTERRUPTED_STATUS", "UNFINISHED_STATUS",
           "interrupted"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: ...)`` for options that take a value and have a default not already described."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 32, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and action.nargs != 0:  # argparse prints no help line at all for an option without help
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and action.nargs != 0 and "default" not in text:
            text += " (default: %(default)s)" if text else "default: %(default)s"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """The programs' parser: the help formatter above, no abbreviated options, and a bad command line answered in
    one line (what was wrong, and ``--help``) instead of argparse's usage block of every option.

    Example:
        >>> parser = ArgumentParser(prog="idaa-x")
        >>> _ = parser.add_argument("--epochs", type=positive_int, default=1)
        >>> parser.format_usage()
        'usage: idaa-x [-h] [--epochs EPOCHS]\\n'
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')} (see --help)\n")


#: Device types the command-line programs accept (``cuda:N`` included).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_name(text: str) -> str:
    """``argparse`` type: a torch device of a supported type (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Example:
        >>> device_name("cuda:1")
        'cuda:1'
    """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICE_TYPES)} (or cuda:N), got {text!r}")
    return text


def _number(text: str, kind: type, what: str, ok) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """``argparse`` type: a finite number >= 0."""
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)


def finite_float(text: str) -> float:
    """``argparse`` type: any finite number."""
    return _number(text, float, "a finite number", lambda v: True)


# -- stopping early, resumably -------------------------------------------------------------------------------------
#: ``--stop-after``: the same words and meaning in every program that trains.
STOP_AFTER_HELP = ("stop after this many epochs of this call, with a checkpoint; the same command with --resume "
                   "continues")
#: ``--max-minutes``: the same words and meaning in every program that trains.
MAX_MINUTES_HELP = ("stop between epochs, with a checkpoint, when the next epoch (as long as the longest so far) "
                    "would end past this many minutes of this call; the first epoch always runs and the final "
                    "evaluation comes on top; the same command with --resume continues")


def deadline_after(minutes: float | None, start: float | None = None) -> float | None:
    """The ``time.time()`` by which a call given ``--max-minutes minutes`` must stop; ``None`` without a limit.

    Example:
        >>> deadline_after(2.0, start=100.0), deadline_after(None)
        (220.0, None)
    """
    if minutes is None:
        return None
    return (time.time() if start is None else start) + 60.0 * minutes


def next_epoch_would_overrun(deadline: float | None, epoch_seconds: float) -> bool:
    """Whether an epoch of ``epoch_seconds`` (the longest of this call so far), started now, would end past
    ``deadline``.

    Example:
        >>> next_epoch_would_overrun(None, 1e9), next_epoch_would_overrun(time.time() + 60, 1.0)
        (False, False)
    """
    return deadline is not None and time.time() + epoch_seconds > deadline


#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_STATUS = 130
#: The exit status of a command that stopped cleanly before its last epoch (``--max-minutes``, ``--stop-after``, a
#: comparison with runs left): the same command with ``--resume`` continues. A finished run exits with 0, an error
#: with 2, so a shell loop can tell the three apart.
UNFINISHED_STATUS = 3


def interrupted(prog: str, out: str | Path) -> str:
    """The one line a command prints when Ctrl-C stops it (instead of a traceback).

    Example:
        >>> print(interrupted("idaa-train", "runs/a"), end="")
        idaa-train: interrupted; the same command with --resume continues from the last checkpoint in runs/a
    """
    return f"{prog}: interrupted; the same command with --resume continues from the last checkpoint in {out}\n"


def named_by_flags(message: str, names: Iterable[str]) -> str:
    """A message about settings (``batch_size: ...``, ``VAEConfig.image_size: ...``), about their flags instead.

    Names are rewritten in the message's head (before its first ``": "``) and, when they hold an underscore (which no
    word of prose does), in the rest too.

    Example:
        >>> named_by_flags("VAEConfig.image_size: expected a multiple of 2 ** num_downsamplings = 4, got 7.",
        ...                ["image_size", "num_downsamplings"])
        '--image-size: expected a multiple of 2 ** --num-downsamplings = 4, got 7.'
        >>> named_by_flags("overwrite and resume: give one", ["overwrite", "resume", "epochs"])
        '--overwrite and --resume: give one'
        >>> named_by_flags("warmup_epochs: 5 warm-up epochs leave none", ["warmup_epochs", "epochs"])
        '--warmup-epochs: 5 warm-up epochs leave none'
        >>> named_by_flags("runs/out/data_dir/results.json: damaged", ["out", "data_dir"])
        'runs/out/data_dir/results.json: damaged'
    """
    head, colon, rest = message.partition(": ")
    if not colon:
        head, rest = "", message
    for name in names:
        pattern = rf"(?<![\w./-])(?:\w+\.)?{re.escape(name)}(?![\w/-])"  # never a part of a word or a path
        flag = "--" + name.replace("_", "-")
        head = re.sub(pattern, flag, head)
        if "_" in name:
            rest = re.sub(pattern, flag, rest)
    return head + colon + rest
