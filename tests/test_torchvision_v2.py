"""IDAATransform in torchvision v2 pipelines: images are transformed, every other entry of a sample passes through."""

from __future__ import annotations

import pytest
import torch
from helpers import batch, make_encoder, make_vae
from torchvision import tv_tensors
from torchvision.transforms import v2

from idaa_transforms import IDAATransform

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def idaa() -> IDAATransform:
    return IDAATransform(make_vae(), encoder=make_encoder().eval(), eps=0.5)


@pytest.fixture
def boxes() -> tv_tensors.BoundingBoxes:
    coords = torch.tensor([[1.0, 2.0, 10.0, 12.0], [5.0, 6.0, 30.0, 20.0]])
    return tv_tensors.BoundingBoxes(coords, format="XYXY", canvas_size=(32, 32))


@pytest.mark.parametrize("wrap", [False, True], ids=["plain-tensor", "tv-image"])
def test_compose_on_an_image_and_boxes_tuple(idaa, boxes, wrap):
    x = batch(4)
    image = tv_tensors.Image(x) if wrap else x
    out_image, out_boxes = v2.Compose([v2.RandomHorizontalFlip(p=1.0), idaa])(image, boxes)
    flipped_image, flipped_boxes = v2.RandomHorizontalFlip(p=1.0)(image, boxes)
    assert type(out_image) is (tv_tensors.Image if wrap else torch.Tensor)
    torch.testing.assert_close(out_image.as_subclass(torch.Tensor), idaa(flipped_image.as_subclass(torch.Tensor)),
                               atol=1e-6, rtol=0)
    assert (out_image - flipped_image).abs().max() > 1e-3
    assert type(out_boxes) is tv_tensors.BoundingBoxes and torch.equal(out_boxes, flipped_boxes)


def test_compose_on_a_dict_sample(idaa, boxes):
    x = batch(4)
    mask = tv_tensors.Mask((x[:, 0] > 0.5).long())
    sample = {"image": tv_tensors.Image(x), "boxes": boxes, "masks": mask, "label": 3, "path": "a.jpg",
              "extra": torch.arange(4)}
    out = v2.Compose([v2.ColorJitter(brightness=0.2), idaa])(sample)
    assert set(out) == set(sample)
    assert type(out["image"]) is tv_tensors.Image and out["image"].shape == x.shape
    assert (out["image"] - x).abs().max() > 1e-3
    assert out["boxes"] is boxes and out["masks"] is mask and out["extra"] is sample["extra"]
    assert out["label"] == 3 and out["path"] == "a.jpg"


def test_a_single_tv_image_comes_back_as_an_image(idaa):
    x = batch(4)
    out = idaa(tv_tensors.Image(x))
    assert type(out) is tv_tensors.Image
    torch.testing.assert_close(out.as_subclass(torch.Tensor), idaa(x), atol=1e-6, rtol=0)


def test_keyword_arguments_still_apply_to_a_sample(boxes):
    idaa = IDAATransform(make_vae(), eps=0.5)
    x = batch(4)
    out, out_boxes = idaa(x, boxes, loss_fn=lambda a, b: (b * x).sum())
    assert (out - x).abs().max() > 1e-3 and out_boxes is boxes


@pytest.mark.parametrize(
    "sample, message",
    [
        ((tv_tensors.Video(torch.rand(2, 3, 3, 32, 32)),), "cannot transform a Video"),
        (({"label": 1},), r"expected a torch.Tensor image batch .*got dict of \['int'\]"),
        ((), "got no input"),
    ],
    ids=["video", "no-image", "nothing"],
)
def test_samples_without_an_image_are_refused(idaa, sample, message):
    with pytest.raises(TypeError, match=message):
        idaa(*sample)


def test_several_plain_images_are_refused_not_one_transformed_and_the_others_passed_through(idaa):
    images = [torch.rand(3, 32, 32) for _ in range(4)]  # a batch left unstacked
    two_views = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    for call in (lambda: idaa(images), lambda: idaa(*images), lambda: idaa(*two_views)):
        with pytest.raises(TypeError, match=r"got \d image tensors of shape .* stack them into one \(B, C, H, W\) "
                                            r"batch with torch.stack, or mark the images with tv_tensors.Image"):
            call()
    x, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    out, same = idaa(x, labels)  # an image batch and its labels: the usual v2 sample
    assert out.shape == x.shape and same is labels
    marked = idaa(tv_tensors.Image(x), torch.rand(4, 3, 32, 32))  # marked: the Image is transformed, the rest passes
    assert isinstance(marked[0], tv_tensors.Image)
