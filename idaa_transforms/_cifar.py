"""CIFAR-10 and CIFAR-100 from a local copy in either of the two common layouts, labels in canonical order.

* torchvision's layout: ``<root>/cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``, ``test_batch``) or
  ``<root>/cifar-100-python/`` (``train``, ``test``), as ``torchvision.datasets.CIFAR10(root, download=True)``
  leaves it. These files are Python pickles of arrays; they are read with an unpickler that accepts only NumPy
  arrays, lists, dicts, strings and numbers, so no code in them can run.
* class folders: ``<root>/train/<class>/<image>`` and ``<root>/test/<class>/<image>`` (any image format), e.g. a
  JPEG export of the data set. Folder names are matched to the canonical class names, so labels agree with
  torchvision's whatever the folder order.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idaa_transforms._download import torchvision_download
from idaa_transforms._image_folders import class_folders, load_image_folder

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "load_cifar"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)

_TORCHVISION = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and plain containers; refuses every other global (no code runs)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
        raise ValueError(f"{path}: not a CIFAR batch file ({err}); replace it with a fresh copy.") from None
    return data, labels


def _layouts(name: str, root: Path) -> str:
    folder = _TORCHVISION[name][0]
    return (f"torchvision's ({root / folder}/, as torchvision.datasets.{name.upper()}"
            f"(root, download=True) leaves it) or class folders ({root}/train/<class>/*.jpg and "
            f"{root}/test/<class>/*.jpg)")


def load_cifar(name: str, root: str | Path, *, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """CIFAR-10/100 ``(N, 3, 32, 32)`` uint8 images and int64 labels (canonical class order) from ``root``.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the folder holding torchvision's ``cifar-10-batches-py``/``cifar-100-python`` or ``train/`` and
            ``test/`` class folders.
        train: the training split (else the test split).
        download: when neither layout is there, let torchvision download the data set into ``root``. Data that is
            there is never downloaded again.

    Raises:
        FileNotFoundError: neither layout is in ``root`` and ``download`` is off (the message names both layouts).
        ValueError: class folders that are not the data set's classes, or a damaged file.
    """
    root = Path(root)
    folder, train_files, test_files, label_key = _TORCHVISION[name]
    classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    split = "train" if train else "test"
    batch_dir = root / folder
    halves = {s: (root / s).is_dir() for s in ("train", "test")}
    if not batch_dir.is_dir() and any(halves.values()) and not all(halves.values()):
        there, absent = ("train", "test") if halves["train"] else ("test", "train")
        raise FileNotFoundError(f"{name}: {root / there}/ is there but {root / absent}/ is not; a class-folder copy "
                                f"needs both ({_layouts(name, root)}), so that evaluation runs on the held-out split.")
    if not batch_dir.is_dir() and (root / split).is_dir():
        found = class_folders(root / split)
        by_lower = {c.lower(): c for c in found}
        missing = [c for c in classes if c not in by_lower]
        extra = sorted(set(by_lower) - set(classes))
        if missing or extra:
            raise ValueError(f"{name}: {root / split} has class folders {found[:12]}{'...' if len(found) > 12 else ''}, "
                             f"which are not {name}'s classes (missing {missing[:5]}, unexpected {extra[:5]}); "
                             f"use --dataset imagefolder for other data.")
        return load_image_folder(root / split, [by_lower[c] for c in classes], image_size=32, cache_root=root)
    if not batch_dir.is_dir():
        if not download:
            raise FileNotFoundError(f"{name}: no local copy in {root}; expected {_layouts(name, root)}. "
                                    f"Point --data-dir at it, or pass --download to fetch it with torchvision.")
        from torchvision import datasets

        dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        torchvision_download(name, root, lambda: dataset(str(root), train=train, download=True))
    files = train_files if train else test_files
    missing = [f for f in files if not (batch_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {batch_dir} lacks {missing}; replace the folder with a complete copy.")
    parts = [_read_batch(batch_dir / f, label_key) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels
