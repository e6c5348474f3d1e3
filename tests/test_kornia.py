"""IDAATransform inside kornia pipelines: an image-only step that leaves masks and boxes to the geometric steps."""

from __future__ import annotations

import re
from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
from helpers import batch, make_encoder, make_vae
from torch import nn

from idaa_transforms import IDAATransform

pytestmark = pytest.mark.usefixtures("single_thread")

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def idaa() -> IDAATransform:
    return IDAATransform(make_vae(), encoder=make_encoder().eval(), eps=0.5)


@pytest.fixture
def targets():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()
    boxes = torch.tensor([[[1.0, 2.0, 10.0, 12.0], [5.0, 6.0, 30.0, 20.0]]]).repeat(4, 1, 1)
    return mask, boxes


def test_augmentation_sequential_image_only(idaa, targets):
    x = batch(4)
    mask, boxes = targets
    pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), idaa, data_keys=["input", "mask", "bbox_xyxy"])
    image, out_mask, out_boxes = pipeline(x, mask, boxes)
    reference = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), data_keys=["input", "mask", "bbox_xyxy"])
    flipped, ref_mask, ref_boxes = reference(x, mask, boxes)
    # Masks and boxes see only the flip.
    assert torch.equal(out_mask, ref_mask)
    assert torch.equal(out_boxes, ref_boxes)
    assert torch.equal(out_mask, mask.flip(-1))
    assert not torch.equal(out_boxes, boxes)
    # The image is the flip followed by IDAA.
    assert image.shape == x.shape
    assert (image - flipped).abs().max() > 1e-3
    torch.testing.assert_close(image, idaa(flipped), atol=1e-6, rtol=0)


def test_nn_sequential_after_color_jitter(idaa):
    x = batch(4)
    jitter = K.ColorJitter(0.2, 0.2, 0.2, 0.05, p=1.0)
    pipeline = nn.Sequential(jitter, idaa)
    torch.manual_seed(0)
    out = pipeline(x)
    torch.manual_seed(0)
    jittered = jitter(x)
    assert out.shape == x.shape
    assert (out - jittered).abs().max() > 1e-3
    torch.testing.assert_close(out, idaa(jittered), atol=1e-6, rtol=0)


def _readme_blocks_through_kornia() -> list[str]:
    """The README's ``python`` blocks up to the last one using kornia (later blocks may build on earlier ones)."""
    if not README.is_file():
        return []
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    last = max((i for i, b in enumerate(blocks) if "kornia" in b), default=-1)
    return blocks[: last + 1]


def _contains_idaa(module: nn.Module) -> bool:
    return any(isinstance(m, IDAATransform) for m in module.children())


def test_readme_kornia_pipelines_behave_as_tested():
    """The README's kornia pipelines, as written, leave masks and boxes to the geometric steps and change images."""
    blocks = _readme_blocks_through_kornia()
    if not blocks:
        pytest.skip("no README.md with kornia examples")
    namespace: dict = {"__name__": "readme_example"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    modules = [v for v in namespace.values() if isinstance(v, nn.Module) and _contains_idaa(v)]
    sequences = [m for m in modules if isinstance(m, K.AugmentationSequential)]
    plain = [m for m in modules if type(m) is nn.Sequential]
    assert sequences and plain, "the README shows IDAATransform in AugmentationSequential and in nn.Sequential"

    x = batch(4)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()
    boxes = torch.tensor([[[2.0, 2.0, 20.0, 20.0]]]).repeat(4, 1, 1)
    keys = ["input", "mask", "bbox_xyxy"]
    for pipeline in sequences:
        idaa = next(m for m in pipeline.children() if isinstance(m, IDAATransform))
        geometric = K.AugmentationSequential(
            *[m for m in pipeline.children() if not isinstance(m, IDAATransform)], data_keys=keys
        )
        torch.manual_seed(1)
        image, out_mask, out_boxes = pipeline(x, mask, boxes)
        torch.manual_seed(1)
        ref_image, ref_mask, ref_boxes = geometric(x, mask, boxes)
        assert torch.equal(out_mask, ref_mask) and torch.equal(out_boxes, ref_boxes)
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        assert (image - ref_image).abs().max() > 1e-4
        torch.testing.assert_close(image, idaa(ref_image), atol=1e-5, rtol=0)
    for pipeline in plain:
        *prefix, idaa = pipeline
        assert isinstance(idaa, IDAATransform)
        torch.manual_seed(2)
        out = pipeline(x)
        torch.manual_seed(2)
        before = nn.Sequential(*prefix)(x)
        assert (out - before).abs().max() > 1e-4
        torch.testing.assert_close(out, idaa(before), atol=1e-5, rtol=0)


def test_inverse_undoes_the_geometry_and_leaves_idaa_applied(idaa):
    """IDAA is not invertible: AugmentationSequential.inverse() skips it, as the docs say."""
    x = batch(4)
    pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), idaa, data_keys=["input"])
    out = pipeline(x)
    torch.testing.assert_close(pipeline.inverse(out), idaa(x.flip(-1)).flip(-1), atol=1e-6, rtol=0)
    assert "not invertible" in IDAATransform.__doc__ and "not invertible" in README.read_text()
