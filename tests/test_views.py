"""The fast SimCLR views against kornia's pipeline: same outputs for the same parameters, same parameter and output
distributions for independent draws, and a SimCLR step that trains on them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from idaa_transforms.views import (
    CROP_RATIO,
    FLIP_P,
    GRAYSCALE_P,
    JITTER,
    JITTER_P,
    SimCLRViews,
    ViewParams,
    simclr_views,
)

pytest.importorskip("kornia")

N = 4096  # samples for the distribution checks: binomial rates within +-0.03 are 3.8 standard deviations
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("single_thread")


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of ``a`` and ``b``."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True) / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True) / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def smooth_images(batch: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Coloured blobs in [0, 1]: random low-resolution noise upsampled, so crops and colours both matter."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size + 6), mode="bilinear", align_corners=False).clamp(0, 1)


def params_of_kornia(pipeline: torch.nn.Sequential) -> ViewParams:
    """The parameters kornia drew in its last call, as :class:`ViewParams`."""
    crop, flip, jitter, gray = (m._params for m in pipeline)
    src = crop["src"]  # corners (x, y): top-left, top-right, bottom-right, bottom-left, inclusive
    box = torch.stack([src[:, 0, 0], src[:, 0, 1], src[:, 1, 0] - src[:, 0, 0] + 1, src[:, 2, 1] - src[:, 0, 1] + 1], 1)
    factors = torch.stack([jitter[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor",
                                               "hue_factor")], 1)
    return ViewParams(box, flip["batch_prob"] > 0.5, jitter["batch_prob"] > 0.5, factors,
                      tuple(jitter["order"].tolist()), gray["batch_prob"] > 0.5)


def kornia_param_draws(batch_shape: tuple[int, ...], min_scale: float = 0.2) -> ViewParams:
    """kornia's parameter draws for a batch, without applying them."""
    pipeline = simclr_views(32, min_scale, backend="kornia")
    draws = [m.forward_parameters(torch.Size(batch_shape)) for m in pipeline]
    for module, params in zip(pipeline, draws):
        module._params = params
    return params_of_kornia(pipeline)


# -- the same parameters give kornia's outputs -------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apply_matches_kornia_for_the_same_parameters(seed: int) -> None:
    torch.manual_seed(seed)
    x = smooth_images(64, seed=seed)
    x[:4] = torch.rand(4, *x.shape[1:])  # some high-frequency images too
    kornia = simclr_views(32, backend="kornia")
    expected = kornia(x)
    params = params_of_kornia(kornia)
    assert params.jitter.any() and params.gray.any() and params.flip.any() and not params.flip.all()
    out = SimCLRViews(32).apply(x, params)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_strong_jitter_of_the_vae_recipe_matches_kornia(seed: int) -> None:
    # The IDAA authors' VAE views: crop scale 0.08-1 and ColorJitter(0.8, 0.8, 0.8, 0.2).
    strong = (0.8, 0.8, 0.8, 0.2)
    torch.manual_seed(seed)
    x = smooth_images(64, seed=seed)
    kornia = simclr_views(32, 0.08, backend="kornia", jitter=strong)
    expected = kornia(x)
    params = params_of_kornia(kornia)
    assert float(params.factors[:, :3].min()) < 0.5 and float(params.factors[:, 3].abs().max()) > 0.1
    torch.testing.assert_close(SimCLRViews(32, 0.08, jitter=strong).apply(x, params), expected, atol=1e-4, rtol=0)
    drawn = SimCLRViews(32, 0.08, generator=seed, jitter=strong).make_params((4096, 3, 32, 32), torch.device("cpu"))
    lows, highs = drawn.factors.amin(0), drawn.factors.amax(0)
    torch.testing.assert_close(lows, torch.tensor([0.2, 0.2, 0.2, -0.2]), atol=0.01, rtol=0)
    torch.testing.assert_close(highs, torch.tensor([1.8, 1.8, 1.8, 0.2]), atol=0.01, rtol=0)


def test_jitter_strengths_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="jitter: expected"):
        SimCLRViews(32, jitter=(0.4, 0.4, 1.5, 0.1))
    with pytest.raises(ValueError, match="jitter: expected"):
        simclr_views(32, jitter=(0.4, 0.4, 0.4, 0.7))


def test_every_colour_order_matches_kornia() -> None:
    torch.manual_seed(3)
    x = smooth_images(32)
    kornia = simclr_views(32, backend="kornia")
    seen = set()
    for _ in range(30):  # 24 orders; kornia draws one per call
        expected = kornia(x)
        params = params_of_kornia(kornia)
        seen.add(params.order)
        torch.testing.assert_close(SimCLRViews(32).apply(x, params), expected, atol=1e-4, rtol=0)
    assert len(seen) >= 12


def test_uint8_input_is_the_float_input_divided_by_255() -> None:
    x = (smooth_images(16) * 255).round().to(torch.uint8)
    views = SimCLRViews(32)
    params = views.make_params(x.shape, x.device)
    torch.testing.assert_close(views.apply(x, params), views.apply(x.float() / 255, params), atol=1e-6, rtol=0)


# -- independent draws have kornia's distributions ------------------------------------------------------------------
@pytest.fixture(scope="module")
def draws() -> tuple[ViewParams, ViewParams]:
    torch.manual_seed(0)
    shape = (N, 3, 32, 32)
    return SimCLRViews(32, generator=0).make_params(shape, torch.device("cpu")), kornia_param_draws(shape)


def test_crop_area_and_ratio_distributions_match_kornia(draws: tuple[ViewParams, ViewParams]) -> None:
    fast, kornia = draws
    for p in (fast, kornia):
        area = p.box[:, 2] * p.box[:, 3] / 32**2
        assert float(area.min()) >= 0.2 * 0.85 and float(area.max()) <= 1  # rounding to whole pixels only
        assert bool((p.box[:, :2] >= 0).all() and (p.box[:, 0] + p.box[:, 2] <= 32).all()
                    and (p.box[:, 1] + p.box[:, 3] <= 32).all())
        ratio = p.box[:, 2] / p.box[:, 3]
        assert float(ratio.min()) >= CROP_RATIO[0] * 0.85 and float(ratio.max()) <= CROP_RATIO[1] / 0.85
    area_fast, area_kornia = (p.box[:, 2] * p.box[:, 3] for p in draws)
    assert ks_statistic(area_fast, area_kornia) < 0.05
    assert ks_statistic(fast.box[:, 2] / fast.box[:, 3], kornia.box[:, 2] / kornia.box[:, 3]) < 0.05
    assert ks_statistic(fast.box[:, 0], kornia.box[:, 0]) < 0.05
    assert abs(float(area_fast.mean() - area_kornia.mean())) / 32**2 < 0.02  # mean area fraction ~ 0.6


def test_probabilities_match_the_pipeline(draws: tuple[ViewParams, ViewParams]) -> None:
    for p in draws:
        assert abs(p.flip.float().mean().item() - FLIP_P) < 0.03
        assert abs(p.jitter.float().mean().item() - JITTER_P) < 0.03
        assert abs(p.gray.float().mean().item() - GRAYSCALE_P) < 0.03


def test_jitter_factor_distributions_match_kornia(draws: tuple[ViewParams, ViewParams]) -> None:
    fast, kornia = draws
    for i, spread in enumerate(JITTER):
        centre = 0.0 if i == 3 else 1.0
        column = fast.factors[:, i]
        assert float(column.min()) >= centre - spread and float(column.max()) <= centre + spread
        assert ks_statistic(column, kornia.factors[:, i]) < 0.05


def test_output_statistics_match_kornia() -> None:
    # Independent draws of both pipelines on the same natural-ish images: per-channel means and standard deviations,
    # the fraction of greyscale outputs and of flipped outputs.
    torch.manual_seed(0)
    x = smooth_images(N // 2, seed=5)
    fast = SimCLRViews(32, generator=1)(x)
    kornia = simclr_views(32, backend="kornia")(x)
    for out in (fast, kornia):
        assert out.shape == (N // 2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(fast.mean((0, 2, 3)), kornia.mean((0, 2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(fast.std((0, 2, 3)), kornia.std((0, 2, 3)), atol=0.01, rtol=0)
    per_image_std = [out.std((2, 3)).mean(1) for out in (fast, kornia)]
    assert ks_statistic(*per_image_std) < 0.06

    def grey_fraction(out: torch.Tensor) -> float:
        return float(((out - out.mean(1, keepdim=True)).abs().amax((1, 2, 3)) < 1e-6).float().mean())

    assert abs(grey_fraction(fast) - GRAYSCALE_P) < 0.03 and abs(grey_fraction(kornia) - GRAYSCALE_P) < 0.03


def test_flip_rate_seen_in_the_outputs() -> None:
    # A grey horizontal ramp stays monotonic through every colour step: increasing unless mirrored.
    ramp = torch.linspace(0.1, 0.9, 32).expand(N // 4, 3, 32, 32).contiguous()
    for out in (SimCLRViews(32, generator=2)(ramp), simclr_views(32, backend="kornia")(ramp)):
        step = out[:, 0, 16, -1] - out[:, 0, 16, 0]
        assert abs(float((step < 0).float().mean()) - FLIP_P) < 0.04


def test_colour_effects_on_a_flat_colour_match_kornia() -> None:
    # On a flat colour, crops and flips change nothing: the outputs' colours are the colour steps' effect alone.
    colour = torch.tensor([0.7, 0.45, 0.2]).view(1, 3, 1, 1)
    x = colour.expand(N // 2, 3, 16, 16).contiguous()
    torch.manual_seed(0)
    fast = SimCLRViews(16, generator=3)(x)[:, :, 0, 0]
    kornia = simclr_views(16, backend="kornia")(x)[:, :, 0, 0]
    for out in (fast, kornia):
        changed = (out - colour.view(1, 3)).abs().amax(1) > 1e-4
        grey = (out - out.mean(1, keepdim=True)).abs().amax(1) < 1e-6
        # jittered: 0.8; greyscale (0.2) also changes the colour: P(changed) = 1 - 0.2 * 0.8
        assert abs(float(changed.float().mean()) - (1 - (1 - JITTER_P) * (1 - GRAYSCALE_P))) < 0.03
        assert abs(float(grey.float().mean()) - GRAYSCALE_P) < 0.03
    for channel in range(3):
        assert ks_statistic(fast[:, channel], kornia[:, channel]) < 0.06
    brightness = [out.amax(1) for out in (fast, kornia)]  # HSV value: brightness and contrast move it
    saturation = [(out.amax(1) - out.amin(1)) / out.amax(1).clamp_min(1e-6) for out in (fast, kornia)]
    assert ks_statistic(*brightness) < 0.06 and ks_statistic(*saturation) < 0.06


# -- shapes, dtypes, devices, seeds, errors ------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
def test_shapes_dtypes_and_devices(device: str, dtype: torch.dtype) -> None:
    x = smooth_images(8).to(device)
    x = (x * 255).to(dtype) if dtype == torch.uint8 else x.to(dtype)
    out = simclr_views(20)(x)
    assert out.shape == (8, 3, 20, 20) and out.device.type == device
    assert out.dtype == (torch.float32 if dtype == torch.uint8 else dtype)
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and not out.requires_grad


def test_low_precision_input_is_cropped_in_float32() -> None:
    x = smooth_images(8)
    views = SimCLRViews(32)
    params = views.make_params(x.shape, x.device)
    expected = views.apply(x.bfloat16().float(), params)
    torch.testing.assert_close(views.apply(x.bfloat16(), params).float(), expected, atol=1 / 128, rtol=0)


def test_a_seed_reproduces_calls_and_leaves_the_global_generator_alone() -> None:
    x = smooth_images(8)
    state = torch.get_rng_state()
    a, b = SimCLRViews(32, generator=7), SimCLRViews(32, generator=7)
    first = a(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, b(x)) and torch.equal(a(x), b(x))
    assert not torch.equal(first, a(x))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(SimCLRViews(32, generator=g)(x), first)


def test_the_global_generator_seeds_the_default() -> None:
    x = smooth_images(8)
    torch.manual_seed(11)
    first = simclr_views(32)(x)
    torch.manual_seed(11)
    assert torch.equal(simclr_views(32)(x), first)


def test_bad_arguments_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        simclr_views(32, 0.0)
    with pytest.raises(ValueError, match="image_size"):
        simclr_views(0)
    with pytest.raises(ValueError, match="backend"):
        simclr_views(32, backend="dali")
    with pytest.raises(ValueError, match="generator"):
        simclr_views(32, backend="kornia", generator=0)
    with pytest.raises(TypeError, match="generator"):
        SimCLRViews(32, generator="0")  # type: ignore[arg-type]
    views = SimCLRViews(32)
    for bad in (torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32), torch.zeros(2, 3, 8, 8, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            views(bad)
    with pytest.raises(TypeError, match="Tensor"):
        views([[0.5]])  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_make_no_host_sync_and_check_the_generator_device() -> None:
    x = (smooth_images(64) * 255).to(torch.uint8).cuda()
    views = SimCLRViews(32, generator=0)
    views(x)  # first call: constants copied to the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        views(x)
        views(x.float() / 255)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="generator"):
        SimCLRViews(32, generator=torch.Generator())(x)


# -- the training step trains on these views --------------------------------------------------------------------
def test_a_simclr_step_with_the_fast_views_lowers_the_loss() -> None:
    from idaa_transforms.trainers.methods import SimCLR
    from idaa_transforms.trainers.models import small_cnn

    torch.manual_seed(0)
    images = (smooth_images(16, size=16, seed=9)[..., :16] * 255).to(torch.uint8)  # uint8, as CIFAR on the device
    model = SimCLR(small_cnn(8), 64, hidden_dim=64, proj_dim=32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    views = simclr_views(16)
    losses = []
    for _ in range(60):
        with torch.no_grad():
            v1, v2 = views(images), views(images)
        loss = model.pair_loss(model(v1), model(v2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert math.isfinite(last) and last < first - 0.2, (first, last)
