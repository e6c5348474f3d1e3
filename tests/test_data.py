"""Data sets as uint8 tensors: CIFAR in both local layouts with canonical labels, image folders with a cache that
follows the folder, clear errors, class-balanced subsets, and the one uint8-to-float conversion."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_class_folders
from idaa_transforms import _image_folders
from idaa_transforms._cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from idaa_transforms.data import batches, class_balanced_subset, load_images, to_float_images


def write_cifar_torchvision(root, rng, per_batch=4):
    """torchvision's CIFAR-10 layout with random images; returns ``{file: (data, labels)}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + k) % 10 for k in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        written[name] = (data, labels)
    return written


def test_cifar10_torchvision_layout(tmp_path):
    written = write_cifar_torchvision(tmp_path, np.random.default_rng(0))
    images, labels = load_images("cifar10", tmp_path, train=True)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32) and labels.dtype == torch.int64
    assert labels[:4].tolist() == written["data_batch_1"][1]
    expected = written["data_batch_1"][0][0].reshape(3, 32, 32)
    assert np.array_equal(images[0].numpy(), expected)
    test_images, test_labels = load_images("cifar10", tmp_path, train=False)
    assert test_images.shape[0] == 4 and test_labels.tolist() == written["test_batch"][1]


def test_cifar_batches_never_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > owned.txt",))

    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(ValueError, match="data_batch_1: not a CIFAR batch file.*refused to load"):
        load_images("cifar10", tmp_path)
    assert not (tmp_path / "owned.txt").exists() and not os.path.exists("owned.txt")


def test_cifar10_class_folders_follow_the_canonical_order(tmp_path):
    # Folders created in reverse and capitalised: labels must still be CIFAR-10's class indices.
    write_class_folders(tmp_path, [c.capitalize() for c in reversed(CIFAR10_CLASSES)], per_class=2)
    images, labels = load_images("cifar10", tmp_path, train=False)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    # The red channel encodes the position in the reversed list: class k was written as position 9 - k.
    red = images[:, 0, 0, 0].float()
    assert torch.allclose(red, (10 * (9 - labels)).float(), atol=3)
    assert labels.tolist() == sorted(labels.tolist())


def test_cifar100_class_folders(tmp_path):
    write_class_folders(tmp_path, CIFAR100_CLASSES, per_class=1)
    images, labels = load_images("cifar100", tmp_path, train=False)
    assert images.shape == (100, 3, 32, 32) and labels.tolist() == list(range(100))


@pytest.mark.parametrize("present, absent", [("train", "test"), ("test", "train")])
def test_half_a_class_folder_copy_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch, present, absent):
    from idaa_transforms import _cifar

    write_class_folders(tmp_path, CIFAR10_CLASSES, per_class=1, splits=(present,))
    monkeypatch.setattr(_cifar, "load_image_folder", lambda *a, **k: pytest.fail("decoded before the check"))
    for train in (True, False):
        with pytest.raises(FileNotFoundError, match=f"{present}/ is there but .*{absent}/ is not"):
            load_images("cifar10", tmp_path, train=train)


def test_class_folders_of_another_data_set_are_refused(tmp_path):
    write_class_folders(tmp_path, [*CIFAR10_CLASSES[:9], "zebra"], per_class=1)
    with pytest.raises(ValueError, match=r"not cifar10's classes \(missing \['truck'\], unexpected \['zebra'\]\)"):
        load_images("cifar10", tmp_path, train=True)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_no_local_copy_is_one_clear_error(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        load_images(name, tmp_path / "nowhere")
    message = str(err.value)
    assert "torchvision's" in message and "train/<class>/" in message and "--download" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("name, builder", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("stl10", "STL10")])
def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch, name, builder):
    import urllib.error

    from torchvision import datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, builder, offline)
    with pytest.raises(FileNotFoundError) as err:
        load_images(name, tmp_path / "nowhere", download=True)
    message = str(err.value)
    assert message.startswith(f"{name}: no local copy") and "could not download it" in message
    assert "Name or service not known" in message and len(message.splitlines()) == 1


def test_the_trainers_download_only_when_asked():
    from idaa_transforms.train_vae import build_parser
    from idaa_transforms.trainers.cli import parse_args
    from idaa_transforms.trainers.config import TrainConfig

    assert TrainConfig().download is False and build_parser().parse_args([]).download is False
    assert parse_args([]).download is False and parse_args(["--download"]).download is True


def test_decoded_images_are_cached_and_the_cache_follows_the_folder(tmp_path, monkeypatch):
    classes = ["cat", "dog"]
    write_class_folders(tmp_path, classes, per_class=3, fmt="png")
    first = load_images("imagefolder", tmp_path, train=True)
    cache = list((tmp_path / ".idaa-cache").glob("train-32px-*.safetensors"))
    assert len(cache) == 1

    decoded = []
    monkeypatch.setattr(_image_folders, "_decode", lambda path, size: decoded.append(path) or np.zeros((size, size, 3),
                                                                                                        np.uint8))
    second = load_images("imagefolder", tmp_path, train=True)
    assert decoded == [] and torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    # A changed folder (a new image) is decoded anew, and the stale cache is replaced.
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "train" / "dog" / "9999.png")
    third = load_images("imagefolder", tmp_path, train=True)
    assert len(decoded) == 7 and third[0].shape[0] == 7
    assert len(list((tmp_path / ".idaa-cache").glob("train-32px-*.safetensors"))) == 1


def test_a_cached_load_is_fast(tmp_path):
    write_class_folders(tmp_path, ["a", "b"], per_class=200, fmt="jpg")
    load_images("imagefolder", tmp_path, train=True)
    started = time.perf_counter()
    images, _ = load_images("imagefolder", tmp_path, train=True)
    assert images.shape[0] == 400 and time.perf_counter() - started < 2.0


def test_imagefolder_needs_a_test_split_with_the_same_classes(tmp_path):
    write_class_folders(tmp_path, ["cat", "dog"], splits=("train",))
    with pytest.raises(FileNotFoundError, match="test not found.*train/<class>/ and test/<class>/"):
        load_images("imagefolder", tmp_path, train=False)
    write_class_folders(tmp_path, ["cat", "zebra"], splits=("test",))
    with pytest.raises(ValueError, match=r"only in train/: \['dog'\], only in test/: \['zebra'\]"):
        load_images("imagefolder", tmp_path, train=False)


def test_an_unreadable_image_is_named(tmp_path):
    write_class_folders(tmp_path, ["cat"], per_class=1)
    broken = tmp_path / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: cannot read this image"):
        load_images("imagefolder", tmp_path, train=True)


def test_imagefolder_resizes_and_crops_any_size(tmp_path):
    write_class_folders(tmp_path, ["a"], per_class=1, size=50, fmt="png")
    images, _ = load_images("imagefolder", tmp_path, train=True, image_size=16)
    assert images.shape == (1, 3, 16, 16)


def test_unknown_data_set():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_images("mnist")


def test_subset_is_class_balanced_seeded_and_ordered():
    labels = torch.arange(10).repeat_interleave(50)
    index = class_balanced_subset(labels, 100, seed=3)
    assert labels[index].bincount().tolist() == [10] * 10
    assert torch.equal(index, class_balanced_subset(labels, 100, seed=3)) and torch.equal(index, index.sort().values)
    assert not torch.equal(index, class_balanced_subset(labels, 100, seed=4))
    uneven = torch.tensor([0] * 2 + [1] * 20)
    assert uneven[class_balanced_subset(uneven, 10)].bincount().tolist() == [2, 8]  # a small class gives all it has
    with pytest.raises(ValueError, match="subset: expected 1 to 22 images"):
        class_balanced_subset(uneven, 23)


def test_load_images_subset(tmp_path):
    write_class_folders(tmp_path, ["a", "b"], per_class=5, fmt="png")
    images, labels = load_images("imagefolder", tmp_path, subset=4, seed=1)
    assert images.shape[0] == 4 and labels.bincount().tolist() == [2, 2]


def test_to_float_images():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert to_float_images(x).tolist() == pytest.approx([0.0, 0.2, 1.0]) and to_float_images(x).dtype == torch.float32
    y = torch.rand(3)
    assert to_float_images(y) is y
    with pytest.raises(TypeError, match="expected uint8 or floating-point"):
        to_float_images(torch.arange(3))


def test_batches_cover_the_data_once_in_a_seeded_order():
    x, y = torch.arange(10).view(10, 1), torch.arange(10)
    seen = torch.cat([b[1] for b in batches(x, y, 3, seed=1)])
    assert seen.numel() == 9 and seen.unique().numel() == 9
    assert torch.equal(seen, torch.cat([b[1] for b in batches(x, y, 3, seed=1)]))
    assert torch.cat([b[1] for b in batches(x, y, 3, drop_last=False, shuffle=False)]).tolist() == list(range(10))
