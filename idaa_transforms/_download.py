"""Data sets that torchvision downloads (CIFAR-10/100, STL-10): a failed download as one line, not a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["torchvision_download"]

T = TypeVar("T")


def torchvision_download(name: str, root: Path, job: Callable[[], T]) -> T:
    """``job()``, a torchvision data set built with ``download=True``; a failed download (no network, a refused or
    corrupted file) becomes a one-line :class:`FileNotFoundError` instead of torchvision's traceback."""
    try:
        return job()
    except (OSError, RuntimeError) as err:
        reason = str(getattr(err, "reason", "") or err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(f"{name}: no local copy in {root}, and torchvision could not download it ({reason}); "
                                f"put a copy there (see --data-dir) and run without --download.") from None
