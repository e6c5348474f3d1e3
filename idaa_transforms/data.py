"""Datasets: CIFAR-10/100 and STL-10 through torchvision, any image folder, and an offline corpus of real photographs.

The offline corpus, ``photos``, is made of random crops (at several scales, resized to 32x32) of the colour
photographs that install with scikit-image and scikit-learn, so it needs no network. Each crop is labelled by its
source photograph, which makes a small, honest classification task for frozen-feature evaluation. Train and test
crops come from disjoint horizontal bands of each photograph, so no test pixel is seen in training.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "PHOTOS",
    "VAE_PHOTOS",
    "GRAY_PHOTOS",
    "EVAL_PHOTOS",
    "DATASETS",
    "load_photo",
    "photo_crops",
    "make_dataset",
    "dataset_to_tensors",
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


def make_dataset(
    name: str,
    root: str | Path = "data",
    train: bool = True,
    download: bool = True,
    image_size: int = 32,
    photos: Sequence[str] = EVAL_PHOTOS,
    crops_per_photo: int = 256,
    seed: int = 0,
) -> Dataset:
    """A dataset of ``(image tensor in [0, 1], label)`` pairs by name.

    Args:
        name: one of ``cifar10``, ``cifar100``, ``stl10`` (torchvision, downloaded to ``root`` when ``download``),
            ``imagefolder`` (``root/<class>/<image>``, resized to ``image_size``) or ``photos`` (offline).
        root: data directory.
        train: training split (STL-10: the labelled ``train`` split; ``unlabeled`` is not used).
        download: let torchvision download the dataset if it is missing.
        image_size: side of the images for ``imagefolder`` and ``photos``; STL-10 is resized to it if different.
        photos, crops_per_photo, seed: the photographs and crops of the ``photos`` corpus.
    """
    from torchvision import datasets, transforms

    if name == "photos":
        return photo_crops(photos, crops_per_photo, image_size, split="train" if train else "test",
                           seed=seed if train else seed + 1)
    to_tensor = transforms.ToTensor()
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        return cls(str(root), train=train, download=download, transform=to_tensor)
    if name == "stl10":
        steps = [to_tensor] if image_size == 96 else [transforms.Resize(image_size), to_tensor]
        return datasets.STL10(str(root), split="train" if train else "test", download=download,
                              transform=transforms.Compose(steps))
    if name == "imagefolder":
        folder = Path(root) / ("train" if train else "test")
        folder = folder if folder.is_dir() else Path(root)
        if not folder.is_dir():
            raise FileNotFoundError(f"imagefolder: {folder} is not a directory of <class>/<image> files.")
        tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), to_tensor])
        return datasets.ImageFolder(str(folder), transform=tf)
    raise ValueError(f"make_dataset: unknown dataset {name!r}; expected one of {DATASETS}.")


def dataset_to_tensors(dataset: Dataset, batch_size: int = 512, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Materialise a (small) dataset of ``(image, label)`` pairs as two tensors, for fast in-memory training."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
):
    """Yield ``(images, labels)`` batches on ``device``; in-memory tensor datasets skip the DataLoader entirely."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        n = images.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield images[index].to(device, non_blocking=True), labels[index].to(device, non_blocking=True)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                         generator=generator, num_workers=num_workers,
                                         pin_memory=torch.device(device).type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), torch.as_tensor(labels).to(device, non_blocking=True)
