"""Folders of ``<class>/<image>`` files decoded once into uint8 tensors, with a cache that follows the folder.

The first load decodes every image (any format Pillow reads) into one ``(N, 3, S, S)`` uint8 tensor and writes it,
with the labels, to a safetensors file under ``<root>/.idaa-cache/``. Later loads read that file (well under a second
for CIFAR-10's 60,000 images) as long as the folder holds the same files (names, sizes and modification times); any
change gives a new cache key, so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idaa_transforms._files import atomic_write_bytes

__all__ = ["IMAGE_SUFFIXES", "class_folders", "load_image_folder"]

#: File suffixes read as images (case-insensitive); other files in the class folders are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CACHE_DIR = ".idaa-cache"
_CACHE_VERSION = "1"


def class_folders(folder: Path) -> list[str]:
    """The sub-folder names of ``folder`` (its classes), sorted; hidden folders are skipped."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(folder: Path, classes: Sequence[str]) -> list[tuple[str, int, os.stat_result]]:
    files = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise FileNotFoundError(f"{folder}: no folder for class {name!r}.")
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                files.append((f"{name}/{entry.name}", label, entry.stat()))
    return files


def _cache_key(files: list[tuple[str, int, os.stat_result]], classes: Sequence[str], image_size: int) -> str:
    digest = hashlib.sha1(f"{_CACHE_VERSION}|{image_size}|{'|'.join(classes)}".encode())
    for rel, label, stat in files:
        digest.update(f"{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                side = min(image.size)  # resize the short side, then centre-crop (torchvision's Resize+CenterCrop)
                scale = image_size / side
                size = (max(image_size, round(image.size[0] * scale)), max(image_size, round(image.size[1] * scale)))
                image = image.resize(size, Image.BICUBIC, reducing_gap=None)
                left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
                image = image.crop((left, top, left + image_size, top + image_size))
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read this image ({err}); remove or replace the file.") from None


def load_image_folder(folder: str | Path, classes: Sequence[str], image_size: int,
                      cache_root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Decode ``folder/<class>/<image>`` into ``(N, 3, S, S)`` uint8 images and int64 labels (index in ``classes``).

    Args:
        folder: the folder holding one sub-folder per class.
        classes: the class names, in label order (each must be a sub-folder of ``folder``).
        image_size: output side ``S``; other sizes are resized (short side) and centre-cropped.
        cache_root: where the decoded cache lives (``<cache_root>/.idaa-cache/``); defaults to ``folder``'s parent.
            An unwritable location only skips the cache, with a warning.

    Raises:
        FileNotFoundError: a class folder is missing, or holds no image at all.
        ValueError: an image cannot be decoded (the message names the file).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / "train" / name).mkdir(parents=True)
        ...     Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "train" / name / "0.png")
        >>> images, labels = load_image_folder(root / "train", ["cat", "dog"], image_size=8)
        >>> images.shape, images.dtype, labels.tolist()
        (torch.Size([2, 3, 8, 8]), torch.uint8, [0, 1])
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    folder = Path(folder)
    files = _listing(folder, classes)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders.")
    cache_dir = Path(cache_root if cache_root is not None else folder.parent) / CACHE_DIR
    stem = f"{folder.name}-{image_size}px"
    cache = cache_dir / f"{stem}-{_cache_key(files, classes, image_size)}.safetensors"
    if cache.is_file():
        try:
            tensors = load_file(str(cache))
            return tensors["images"], tensors["labels"]
        except (SafetensorError, KeyError, OSError):
            pass  # a damaged cache is rebuilt below
    images = np.stack([_decode(folder / rel, image_size) for rel, _, _ in files])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label, _ in files], dtype=torch.int64)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{stem}-*.safetensors"):
            stale.unlink()
        atomic_write_bytes(cache, save({"images": images, "labels": labels}))
    except OSError as err:
        warnings.warn(f"could not write the decoded-image cache in {cache_dir} ({err.strerror}); "
                      f"the next load decodes the images again.", stacklevel=2)
    return images, labels
