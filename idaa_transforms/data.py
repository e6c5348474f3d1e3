"""Data sets as uint8 image tensors: CIFAR-10/100 (local copies), STL-10, any image folder, and offline photographs.

:func:`load_images` returns a whole split as ``(N, C, H, W)`` uint8 images and int64 labels, which the trainers keep
on the device and convert per batch with :func:`to_float_images`. CIFAR reads torchvision's layout or class folders
(:mod:`idaa_transforms._cifar`); image folders are decoded once and cached (:mod:`idaa_transforms._image_folders`).

The offline corpus, ``photos``, is made of random crops (at several scales, resized to 32x32) of the colour
photographs that install with scikit-image and scikit-learn, so it needs no network. Each crop is labelled by its
source photograph, which makes a small, honest classification task for frozen-feature evaluation. Train and test
crops come from disjoint horizontal bands of each photograph, so no test pixel is seen in training.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "PHOTOS",
    "VAE_PHOTOS",
    "GRAY_PHOTOS",
    "EVAL_PHOTOS",
    "DATASETS",
    "load_photo",
    "photo_crops",
    "load_images",
    "to_float_images",
    "to_uint8_images",
    "memory_format_for",
    "class_balanced_subset",
    "batches",
]

#: Colour photographs available offline (scikit-image's bundled data and scikit-learn's sample images).
PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "china", "flower",
)
#: A split of the photographs into two disjoint groups: one to train VAEs on, one for SSL training and evaluation.
VAE_PHOTOS: tuple[str, ...] = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina")
EVAL_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "rocket", "china", "flower")
#: Greyscale photographs (scikit-image), replicated to three channels: extra texture for training VAEs.
GRAY_PHOTOS: tuple[str, ...] = ("camera", "brick", "grass", "gravel", "coins", "moon", "clock", "cell")

DATASETS = ("cifar10", "cifar100", "stl10", "imagefolder", "photos")

#: Fraction of each photograph's height used for training crops; the band below it is for test crops.
TRAIN_BAND = 0.7


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One offline photograph as a read-only ``(H, W, 3)`` uint8 array (needs scikit-image and scikit-learn)."""
    photo = _read_photo(name)
    photo.setflags(write=False)
    return photo


def _read_photo(name: str) -> np.ndarray:
    if name not in PHOTOS + GRAY_PHOTOS:
        raise ValueError(f"load_photo: unknown photograph {name!r}; expected one of {PHOTOS + GRAY_PHOTOS}.")
    try:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            return np.array(load_sample_image(f"{name}.jpg"))
        import skimage.data

        photo = np.array(getattr(skimage.data, name)())
        return np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
    except ImportError as err:
        raise ImportError(
            "The offline 'photos' corpus needs scikit-image and scikit-learn: pip install 'idaa_transforms[photos]'."
        ) from err


def photo_crops(
    names: Sequence[str] = PHOTOS,
    crops_per_photo: int = 256,
    size: int = 32,
    scale: tuple[int, int] = (32, 160),
    split: str = "train",
    seed: int = 0,
) -> TensorDataset:
    """Random square crops of the offline photographs, resized to ``size``, labelled by photograph.

    Args:
        names: photographs to crop (the label is the index in ``names``).
        crops_per_photo: crops drawn from each photograph.
        size: output side in pixels.
        scale: range of crop sides in source pixels, drawn log-uniformly (several scales per photograph).
        split: ``"train"`` (top band of each photograph), ``"test"`` (the disjoint bottom band) or ``"all"``.
        seed: makes the crops reproducible.

    Returns:
        A ``TensorDataset`` of ``(B, 3, size, size)`` float images in [0, 1] and int64 labels.

    Example:
        >>> ds = photo_crops(["astronaut", "coffee"], crops_per_photo=4)
        >>> ds.tensors[0].shape, ds.tensors[1].tolist()
        (torch.Size([8, 3, 32, 32]), [0, 0, 0, 0, 1, 1, 1, 1])
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"photo_crops: split must be 'train', 'test' or 'all', got {split!r}.")
    generator = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(names):
        photo = torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1).float() / 255
        height = photo.shape[1]
        cut = int(height * TRAIN_BAND)
        band = {"train": photo[:, :cut], "test": photo[:, cut:], "all": photo}[split]
        h, w = band.shape[1:]
        low, high = min(scale[0], h, w), min(scale[1], h, w)
        sides = np.exp(generator.uniform(np.log(low), np.log(high), crops_per_photo)).astype(int)
        for side in sides:
            top = generator.integers(0, h - side + 1)
            left = generator.integers(0, w - side + 1)
            crop = band[:, top : top + side, left : left + side]
            images.append(torch.nn.functional.interpolate(
                crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
            labels.append(label)
    return TensorDataset(torch.stack(images).clamp_(0, 1), torch.tensor(labels))


def load_images(
    name: str,
    root: str | Path = "data",
    *,
    train: bool = True,
    image_size: int = 32,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
    photos: Sequence[str] = EVAL_PHOTOS,
    crops_per_photo: int = 256,
) -> tuple[Tensor, Tensor]:
    """One split of a data set as ``(N, 3, H, W)`` uint8 images and int64 labels, on the CPU.

    Args:
        name: ``cifar10`` or ``cifar100`` (a local copy in torchvision's layout or ``root/{train,test}/<class>/``
            image folders; labels in the data set's canonical class order), ``stl10`` (torchvision's layout; the
            labelled ``train``/``test`` splits), ``imagefolder`` (``root/train/<class>/<image>`` and
            ``root/test/<class>/<image>`` with the same classes, any image format, resized and centre-cropped to
            ``image_size``) or ``photos`` (the offline corpus, see :func:`photo_crops`).
        root: the data folder (``--data-dir``).
        train: the training split, else the test split.
        image_size: side of ``imagefolder``, ``stl10`` and ``photos`` images (CIFAR is always 32).
        download: let torchvision download CIFAR or STL-10 when no local copy is found; a local copy is never
            downloaded again.
        subset: keep a class-balanced, seeded subset of this many images (see :func:`class_balanced_subset`).
        seed: the subset's seed; also the ``photos`` crops' seed.
        photos, crops_per_photo: the photographs and crops of the ``photos`` corpus.

    Raises:
        FileNotFoundError: no local copy and no ``download``; an ``imagefolder`` without ``train/`` or ``test/``.
        ValueError: an unknown name, class folders that differ between the splits, an unreadable image (named).

    Example:
        >>> images, labels = load_images("photos", train=False, photos=["coffee", "rocket"], crops_per_photo=3)
        >>> images.shape, images.dtype, labels.tolist()
        (torch.Size([6, 3, 32, 32]), torch.uint8, [0, 0, 0, 1, 1, 1])
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown data set {name!r}; expected one of {DATASETS}.")
    root = Path(root)
    if name == "photos":
        crops = photo_crops(photos, crops_per_photo, image_size, split="train" if train else "test",
                            seed=seed if train else seed + 1)
        images, labels = to_uint8_images(crops.tensors[0]), crops.tensors[1]
    elif name in ("cifar10", "cifar100"):
        from idaa_transforms._cifar import load_cifar

        images, labels = load_cifar(name, root, train=train, download=download)
    elif name == "stl10":
        images, labels = _load_stl10(root, train=train, download=download, image_size=image_size)
    else:
        images, labels = _load_imagefolder(root, train=train, image_size=image_size)
    if subset is not None:
        index = class_balanced_subset(labels, subset, seed=seed)
        images, labels = images[index], labels[index]
    return images, labels


def _load_imagefolder(root: Path, *, train: bool, image_size: int) -> tuple[Tensor, Tensor]:
    from idaa_transforms._image_folders import class_folders, load_image_folder

    folders = {split: root / split for split in ("train", "test")}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"imagefolder: {' and '.join(missing)} not found; --data-dir must hold train/<class>/ "
                                f"and test/<class>/ folders of images (any format Pillow reads), so that evaluation "
                                f"runs on held-out images.")
    classes = {split: class_folders(folder) for split, folder in folders.items()}
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise ValueError(f"imagefolder: train/ and test/ must have the same class folders; only in train/: "
                         f"{only_train}, only in test/: {only_test}.")
    if not classes["train"]:
        raise FileNotFoundError(f"imagefolder: {folders['train']} has no class folders (<class>/<image>).")
    split = "train" if train else "test"
    return load_image_folder(folders[split], classes[split], image_size=image_size, cache_root=root)


def _load_stl10(root: Path, *, train: bool, download: bool, image_size: int) -> tuple[Tensor, Tensor]:
    from torchvision import datasets

    from idaa_transforms._download import torchvision_download

    folder = root / "stl10_binary"
    if not folder.is_dir() and not download:
        raise FileNotFoundError(f"stl10: no local copy in {root}; expected torchvision's layout ({folder}/). "
                                f"Point --data-dir at it, or pass --download to fetch it with torchvision.")
    ds = torchvision_download("stl10", root, lambda: datasets.STL10(str(root), split="train" if train else "test",
                                                                     download=download))
    images = torch.from_numpy(ds.data)  # (N, 3, 96, 96) uint8, read with numpy (no pickle)
    if image_size != images.shape[-1]:
        resized = torch.nn.functional.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    return images, torch.from_numpy(ds.labels.astype(np.int64))


def class_balanced_subset(labels: Tensor, size: int, seed: int = 0) -> Tensor:
    """Indices of ``size`` samples, as equal a share of each class as possible, drawn with ``seed``, in order.

    Example:
        >>> class_balanced_subset(torch.tensor([0, 0, 0, 1, 1, 1]), 4, seed=0).tolist()
        [0, 2, 4, 5]
    """
    classes = labels.unique()
    if not 0 < size <= labels.numel():
        raise ValueError(f"subset: expected 1 to {labels.numel()} images (the split's size), got {size}.")
    generator = torch.Generator().manual_seed(seed)
    share, extra = divmod(size, classes.numel())
    chosen = []
    for rank, label in enumerate(classes.tolist()):
        members = (labels == label).nonzero().flatten()
        take = min(members.numel(), share + (rank < extra))
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
    index = torch.cat(chosen).sort().values
    if index.numel() < size:  # small classes could not give their share: fill from the rest
        rest = torch.ones(labels.numel(), dtype=torch.bool)
        rest[index] = False
        pool = rest.nonzero().flatten()
        index = torch.cat([index, pool[torch.randperm(pool.numel(), generator=generator)[: size - index.numel()]]])
        index = index.sort().values
    return index


def to_float_images(images: Tensor) -> Tensor:
    """uint8 images (0-255) as float32 in [0, 1]; floating-point images pass through unchanged.

    Example:
        >>> to_float_images(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
        [0.0, 1.0]
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or floating-point tensors, got {images.dtype}.")
    return images


def memory_format_for(device: torch.device | str) -> torch.memory_format:
    """How the trainers lay image batches and convolution weights out on ``device``: ``channels_last`` on CUDA,
    where cuDNN's convolutions (bf16 above all) run fastest in it, contiguous elsewhere.

    Example:
        >>> memory_format_for("cpu")
        torch.contiguous_format
    """
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def to_uint8_images(images: Tensor) -> Tensor:
    """Floating-point images in [0, 1] as uint8 (0-255), rounded to the nearest level; the inverse of
    :func:`to_float_images` up to that rounding.

    Example:
        >>> to_uint8_images(torch.tensor([0.0, 0.2, 1.0])).tolist()
        [0, 51, 255]
    """
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def batches(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` mini-batches of in-memory tensors, on whatever device they are.

    The order is drawn on the CPU from ``seed``, so it is the same on every device and needs no synchronisation.

    Example:
        >>> x, y = torch.arange(5).view(5, 1), torch.arange(5)
        >>> [b[1].tolist() for b in batches(x, y, 2, shuffle=False)]
        [[0, 1], [2, 3]]
    """
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    order = order.to(images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]
