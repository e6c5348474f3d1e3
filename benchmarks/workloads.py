"""What the benchmarks time, built from the library's public pieces only.

Two suites (``bench.py --suite``):

``transform``: ``IDAATransform`` against its own lower bound, a pixel-space attack and a plain SimCLR step. For one
configuration (VAE, image size, batch size, precision, compilation), on the same inputs:

(a) ``a_views``          two SimCLR views of the batch (the trainers' ``simclr_views``);
(b) ``b_idaa_anchor``    ``IDAATransform`` end to end with ``anchor=encoder(x)`` passed, as a trainer does;
    ``b_idaa_no_anchor`` the same without ``anchor`` (one more, gradient-free, encoder pass);
(c) the sum of the algorithm's necessary parts, each timed alone, through the VAE's public methods:
    ``c1_encode``        ``vae.encode(v).mu`` of the input mapped to VAE space, no gradient (``encode`` also
                         evaluates the log-variance head, which the transform skips: c1 slightly overstates);
    ``c2_decode_fwd_bwd``  ``vae.decode(mu)`` with gradient, mapped to pixels, ``x_adv = G + (x - G)``, backward to
                         the latent;
    ``c3_encoder_fwd_bwd`` encoder forward on ``x_adv`` plus NT-Xent against the anchor, backward to the input;
    ``c4_step_decode``   the signed step on the latent and the final gradient-free decode plus residual;
(d) ``d_pixel_fgsm``     :class:`~idaa_transforms.pixel_fgsm.PixelFGSM` of the same encoder and loss (8/255);
(e) ``e_step_plain``     a SimCLR training step: views, encoder forward/backward on both, optimiser step;
    ``e_step_idaa``      the same plus ``IDAA(v1, anchor=z1.detach())``, a forward of ``x_adv`` through the
                         adversarial BatchNorms and the backward of the combined loss.

``trainer``: the reference trainer's step against the model's own cost, at one configuration:

``model_only``     ResNet-18 (or the small CNN) forward and backward on two ready-made views, the loss, the
                   optimiser step: the limit;
``plain_step``     the trainer's plain SimCLR step, views included (a uint8 batch gathered from the data set on
                   the device, two views, two forwards, loss, backward, step);
``plain_step_kornia``  the same with the kornia views (the trainer before the fast views);
``views_fast``, ``views_kornia``  the two views of the batch alone, with each backend;
``idaa_step``      the trainer's IDAA step (``model.adversarial_view``, the adversarial forward, the combined loss);
``model_only_3views``  the IDAA step's model work on three ready-made views (two views and a ready ``x_adv``), no
                   attack;
``attack_only``    ``model.adversarial_view`` alone, with the anchor the step has already computed: with
                   ``model_only_3views`` and the views, the IDAA step's own limit (``idaa_limit``);
and, timed as whole epochs over ``epoch_images`` images: the baseline (``plain_step``), the IDAA step, and the
usual alternative, the same model step fed by torchvision transforms v2 on CPU ``DataLoader`` workers.

The encoders are the trainers' (``build_method``), with dual BatchNorms as the trainers build them.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig, adversarial_bn, convert_to_dual_bn, nt_xent
from idaa_transforms.pixel_fgsm import PixelFGSM
from idaa_transforms.views import CROP_RATIO, FLIP_P, GRAYSCALE_P, JITTER, JITTER_P, simclr_views
from idaa_transforms.trainers.distributed import shard_indices
from idaa_transforms.trainers.engine import train_step, two_views
from idaa_transforms.trainers.methods import SimCLR, build_method

__all__ = [
    "BenchConfig",
    "TrainerBenchConfig",
    "Workloads",
    "PART_KEYS",
    "RATIO_KEYS",
    "TRAINER_KEYS",
    "build_vae",
    "build_simclr",
    "vae_config_for",
    "build_workloads",
    "build_trainer_workloads",
    "time_workloads",
    "time_steps",
    "measure_memory",
    "derive",
    "run_config",
    "run_trainer",
    "views_breakdown",
]

PART_KEYS = ("c1_encode", "c2_decode_fwd_bwd", "c3_encoder_fwd_bwd", "c4_step_decode")
RATIO_KEYS = ("b/c", "b_no_anchor/c", "b/d", "e_idaa/e_plain")
TRAINER_KEYS = ("model_only", "plain_step", "plain_step_kornia", "views_fast", "views_kornia", "idaa_step",
                "model_only_3views", "attack_only")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("none", "transform", "modules")


# -- configuration -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """One measured point of the ``transform`` suite.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        arch: the trainers' encoder, ``"resnet18"`` or ``"small_cnn"``.
        vae: ``"paper"`` (``VAEConfig()`` width 128, latent 512, built at ``image_size``), ``"shipped"``
            (``IdentityVAE.from_pretrained()``, 32 px; other sizes are resized by the transform) or ``"tiny"``.
        image_size: side of the square input images.
        batch_size: images per batch.
        amp: ``None`` (fp32) or ``"bf16"``/``"fp16"`` autocast around every workload.
        compile: ``"none"``, ``"transform"`` (``torch.compile`` of the transform's forward) or ``"modules"``
            (``torch.compile`` of the VAE's ``encode``/``decode`` and of the encoder).
        repeats: timed repeats per workload (median reported).
        warmup: untimed calls per workload before timing.
        eps: latent radius of IDAA; the pixel FGSM uses ``8 / 255``.
        seed: seed of the weights and inputs.
    """

    device: str = "cpu"
    arch: str = "small_cnn"
    vae: str = "paper"
    image_size: int = 32
    batch_size: int = 64
    amp: str | None = None
    compile: str = "none"
    repeats: int = 5
    warmup: int = 2
    eps: float = 0.1
    seed: int = 0

    @property
    def label(self) -> str:
        precision = self.amp or "fp32"
        return f"{self.vae}/{self.arch}/{self.image_size}px/b{self.batch_size}/{precision}/compile={self.compile}"


@dataclass(frozen=True)
class TrainerBenchConfig:
    """The ``trainer`` suite's configuration (the reference: CUDA, ResNet-18, 32 px, batch 512, bf16, channels_last).

    Args:
        device, arch, vae, image_size, batch_size, repeats, warmup, eps, seed: as in :class:`BenchConfig`.
        amp: ``None`` or ``"bf16"``/``"fp16"`` autocast around the forward passes and losses, as the trainer's
            ``--amp`` does.
        channels_last: model, VAE and views in channels-last memory format.
        epoch_images: images per timed epoch (CIFAR-10: 50,000); 0 skips the epochs.
        loader_workers: ``DataLoader`` workers of the torchvision v2 alternative; 0 skips it.
    """

    device: str = "cpu"
    arch: str = "resnet18"
    vae: str = "shipped"
    image_size: int = 32
    batch_size: int = 512
    amp: str | None = "bf16"
    channels_last: bool = True
    repeats: int = 20
    warmup: int = 3
    epoch_images: int = 50_000
    loader_workers: int = 16
    eps: float = 0.1
    seed: int = 0

    @property
    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.vae}/{self.arch}/{self.image_size}px/b{self.batch_size}/{self.amp or 'fp32'}/{layout}"


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp: expected one of {tuple(AMP_DTYPES)} or None, got {amp!r}.")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def vae_config_for(image_size: int, **overrides: Any) -> VAEConfig:
    """The paper's VAE (width 128, latent 512) at a native ``image_size``, with a bottleneck of about 8 x 8.

    32 px -> 2 downsamplings (8 x 8), 64 -> 3 (8 x 8), 96 -> 4 (6 x 6), 224 -> 5 (7 x 7).
    """
    n = max(1, round(math.log2(image_size / 8)))
    while n > 1 and image_size % 2**n:
        n -= 1
    return VAEConfig(image_size=image_size, num_downsamplings=n, **overrides)


def build_vae(kind: str, image_size: int, device: torch.device) -> IdentityVAE:
    """The VAE of a benchmark point, in eval mode on ``device``."""
    if kind == "paper":
        vae = IdentityVAE(vae_config_for(image_size))
    elif kind == "shipped":
        vae = IdentityVAE.from_pretrained()
    elif kind == "tiny":  # for smoke tests only
        vae = IdentityVAE(vae_config_for(image_size, width=16, latent_dim=8))
    else:
        raise ValueError(f"vae: expected 'paper', 'shipped' or 'tiny', got {kind!r}.")
    return vae.to(device).eval()


def build_simclr(arch: str, image_size: int = 32) -> SimCLR:
    """The trainers' SimCLR model (backbone and projection head) with dual BatchNorms, in train mode.

    Above 64 px the ResNet-18 gets torchvision's ImageNet stem (7x7 stride-2 convolution and max-pool) instead of
    the trainers' CIFAR stem, which would not fit a large batch of 224 px images in memory.
    """
    model = build_method("simclr", arch)
    if arch == "resnet18" and image_size > 64:
        model.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        model.backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return convert_to_dual_bn(model).train()


# -- transform suite ---------------------------------------------------------------------------------------------------
@dataclass
class Workloads:
    """Callables to time (each runs one batch) and what describes them."""

    fns: dict[str, Callable[[], Any]]
    meta: dict[str, Any] = field(default_factory=dict)


def build_workloads(cfg: BenchConfig) -> Workloads:
    """Models, inputs and the timed callables of one ``transform`` configuration."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.vae, cfg.image_size, device)
    model = build_simclr(cfg.arch, cfg.image_size).to(device)
    encoder = model.encoder
    views = simclr_views(cfg.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    idaa = IDAATransform(vae, encoder=encoder, eps=cfg.eps, use_adversarial_bn=True).to(device)
    pixel = PixelFGSM(encoder, eps=8 / 255, temperature=idaa.temperature, use_adversarial_bn=True)
    x = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)

    # The models the workloads call, possibly compiled; the transform keeps calling ``encoder`` itself.
    vae_encode, vae_decode, net = vae.encode, vae.decode, encoder
    transform: Callable[..., Tensor] = idaa
    if cfg.compile == "transform":
        transform = torch.compile(idaa)
    elif cfg.compile == "modules":
        # Instance attributes shadow the methods, so the transform's own calls go through the compiled versions.
        vae.encode = torch.compile(vae.encode)  # type: ignore[method-assign]
        vae.decode = torch.compile(vae.decode)  # type: ignore[method-assign]
        encoder.compile()
        vae_encode, vae_decode = vae.encode, vae.decode
    elif cfg.compile != "none":
        raise ValueError(f"compile: expected one of {COMPILE_MODES}, got {cfg.compile!r}.")
    amp = _autocast(device, cfg.amp)

    # Pixels <-> VAE space from the VAE's public config, as the transform maps a [0, 1] caller's batch.
    mean = torch.tensor(vae.config.input_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.input_std, device=device).view(1, -1, 1, 1)
    native = (vae.config.image_size,) * 2

    def to_vae(v: Tensor) -> Tensor:
        v = (v - mean) / std
        if v.shape[-2:] != native:
            v = F.interpolate(v, size=native, mode="bilinear", antialias=True, align_corners=False)
        return v

    def to_pixels(g: Tensor) -> Tensor:
        if g.shape[-2:] != x.shape[-2:]:
            g = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (g * std + mean).to(x.dtype)

    # Fixed intermediate tensors for the separately timed parts (their values do not change the work).
    with torch.no_grad(), amp:
        anchor = net(x).detach()
        mu = vae_encode(to_vae(x)).mu
        g = to_pixels(vae_decode(mu))
    residual = (x - g).detach()
    grad_x_adv = torch.randn_like(x)
    grad_z = torch.randn_like(mu)

    def views_pair() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return views(x), views(x)

    def idaa_anchor() -> Tensor:
        with amp:
            return transform(x, anchor=anchor)

    def idaa_no_anchor() -> Tensor:
        with amp:
            return transform(x)

    def c1_encode() -> Tensor:
        with torch.no_grad(), amp:
            return vae_encode(to_vae(x)).mu

    def c2_decode_fwd_bwd() -> Tensor:
        with torch.enable_grad(), amp:
            z = mu.detach().requires_grad_(True)
            g = to_pixels(vae_decode(z))
            x_adv = g + (x - g.detach())
            return torch.autograd.grad(x_adv, z, grad_outputs=grad_x_adv)[0]

    def c3_encoder_fwd_bwd() -> Tensor:
        with torch.enable_grad(), amp, adversarial_bn(True):
            x_adv = x.detach().requires_grad_(True)
            loss = nt_xent(anchor, net(x_adv).flatten(1), idaa.temperature)
            return torch.autograd.grad(loss, x_adv)[0]

    def c4_step_decode() -> Tensor:
        with torch.no_grad(), amp:
            z = mu + cfg.eps * grad_z.sign()  # the L-inf step; the projection onto the ball is a no-op here
            z = mu + (z - mu).clamp(-cfg.eps, cfg.eps)
            return to_pixels(vae_decode(z)) + residual

    def pixel_fgsm() -> Tensor:
        with amp:
            return pixel(x, anchor=anchor)

    def step_plain() -> Tensor:
        v1, v2 = views_pair()
        with amp:
            z1, z2 = net(torch.cat([v1, v2])).chunk(2)
            loss = nt_xent(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def step_idaa() -> Tensor:
        v1, v2 = views_pair()
        with amp:
            z1, z2 = net(torch.cat([v1, v2])).chunk(2)
            v_adv = transform(v1, anchor=z1.detach())
            with adversarial_bn(True):
                z_adv = net(v_adv)
            loss = nt_xent(z1, z2) + nt_xent(z1, z_adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    fns: dict[str, Callable[[], Any]] = {
        "a_views": views_pair,
        "b_idaa_anchor": idaa_anchor,
        "b_idaa_no_anchor": idaa_no_anchor,
        "c1_encode": c1_encode,
        "c2_decode_fwd_bwd": c2_decode_fwd_bwd,
        "c3_encoder_fwd_bwd": c3_encoder_fwd_bwd,
        "c4_step_decode": c4_step_decode,
        "d_pixel_fgsm": pixel_fgsm,
        "e_step_plain": step_plain,
        "e_step_idaa": step_idaa,
    }
    meta = {
        "vae_config": vae.config.to_dict(),
        "vae_params_M": round(sum(p.numel() for p in vae.parameters()) / 1e6, 3),
        "encoder_params_M": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
    }
    return Workloads(fns, meta)


# -- trainer suite -----------------------------------------------------------------------------------------------------
def build_trainer_workloads(cfg: TrainerBenchConfig) -> tuple[Workloads, dict[str, Callable[[Tensor], Any]], Tensor]:
    """The trainer suite's per-call workloads, its step functions (a uint8 batch in) and the data set on the device.

    The steps are the trainer's own functions (``idaa_transforms.trainers.engine``: ``two_views`` of a uint8 batch
    gathered on the device, then ``train_step``: two forwards, ``model.pair_loss``, with IDAA
    ``model.adversarial_view`` and a forward of ``x_adv`` under ``adversarial_bn``, backward, Adam step).
    """
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_simclr(cfg.arch, cfg.image_size).to(device, memory_format=memory_format)
    vae = build_vae(cfg.vae, cfg.image_size, device).to(memory_format=memory_format)
    idaa = IDAATransform(vae, encoder=model.encoder, eps=cfg.eps, temperature=model.temperature,
                         use_adversarial_bn=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-6)
    views = {"fast": simclr_views(cfg.image_size), "kornia": simclr_views(cfg.image_size, backend="kornia")}
    amp = _autocast(device, cfg.amp)
    amp_dtype = AMP_DTYPES[cfg.amp] if cfg.amp else None  # checked by _autocast
    images = max(cfg.batch_size, min(cfg.epoch_images, 50_000)) if cfg.epoch_images else cfg.batch_size
    data = torch.randint(0, 256, (images, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    batch = data[:cfg.batch_size]

    def make_views(x: Tensor, backend: str = "fast") -> tuple[Tensor, Tensor]:
        # The trainer hands its uint8 batch to the fast views; kornia's modules need floats in [0, 1].
        return two_views(views[backend], x if backend == "fast" else x.float().div_(255), memory_format)

    def model_step(v1: Tensor, v2: Tensor, attack: bool) -> Tensor:
        """The trainer's step on two views: plain, or IDAA (``attack``)."""
        return train_step(model, optimizer, v1, v2, adversary=idaa if attack else None, amp=amp_dtype)

    def model_step_3views(v1: Tensor, v2: Tensor, x_adv: Tensor) -> Tensor:
        """The model's work for the IDAA loss on three ready views (no attack): the IDAA step's limit without it."""
        with amp:
            out1, out2 = model(v1), model(v2)
            with adversarial_bn(True):
                out_adv = model(x_adv)
            loss = model.pair_loss(out1, out2) + model.pair_loss(out1, out_adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    ready = make_views(batch)
    with torch.no_grad(), amp:
        ready_out = model(ready[0])  # the anchor the step computes anyway, for the attack alone
    with amp:
        ready_adv = model.adversarial_view(idaa, ready[0], ready_out)

    def attack_only() -> Tensor:
        with amp:
            return model.adversarial_view(idaa, ready[0], ready_out)

    fns: dict[str, Callable[[], Any]] = {
        "model_only": lambda: model_step(*ready, attack=False),
        "model_only_3views": lambda: model_step_3views(*ready, ready_adv),
        "attack_only": attack_only,
        "plain_step": lambda: model_step(*make_views(batch), attack=False),
        "plain_step_kornia": lambda: model_step(*make_views(batch, "kornia"), attack=False),
        "views_fast": lambda: make_views(batch),
        "views_kornia": lambda: make_views(batch, "kornia"),
        "idaa_step": lambda: model_step(*make_views(batch), attack=True),
    }
    steps: dict[str, Callable[[Tensor], Any]] = {
        "baseline": lambda x: model_step(*make_views(x), attack=False),
        "idaa": lambda x: model_step(*make_views(x), attack=True),
        "model_fed": lambda v: model_step(*v, attack=False),  # ``v``: two views from the loader
    }
    meta = {
        "encoder_params_M": round(sum(p.numel() for p in model.encoder.parameters()) / 1e6, 3),
        "vae_config": vae.config.to_dict(),
    }
    return Workloads(fns, meta), steps, data


def views_breakdown(cfg: TrainerBenchConfig, clock: str = "wall") -> dict[str, float]:
    """Median ms of each stage of one view of a ``[0, 1]`` batch: kornia's four modules and the fast backend's steps.

    Each kornia module gets the output of the one before it, as in the pipeline; the fast steps are timed on the
    same crop with one set of drawn parameters.
    """
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    x = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    kornia = simclr_views(cfg.image_size, backend="kornia")
    fast = simclr_views(cfg.image_size)
    with torch.no_grad():
        inputs = [x]
        for module in kornia:
            inputs.append(module(inputs[-1]))
        params = fast.make_params(x.shape, device)
        crop = fast.apply(x, params._replace(jitter=params.jitter & False, gray=params.gray & False))
        factor = [params.factors[:, i].view(-1, 1, 1, 1) for i in range(4)]
    names = ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale")
    fns: dict[str, Callable[[], Any]] = {"kornia/pipeline": lambda: kornia(x)}
    for name, module, inp in zip(names, kornia, inputs):
        fns[f"kornia/{name}"] = lambda module=module, inp=inp: module(inp)
    # kornia's own faster paths: the crop by one batched warp instead of per-sample slices, a fixed colour order.
    import kornia.augmentation as K

    warp_crop = K.RandomResizedCrop((cfg.image_size,) * 2, scale=(0.2, 1.0), ratio=CROP_RATIO, cropping_mode="resample")
    fixed_order = K.ColorJitter(*JITTER, p=JITTER_P, order=(0, 1, 2, 3))
    fns["kornia/RandomResizedCrop(cropping_mode='resample')"] = lambda: warp_crop(x)
    fns["kornia/ColorJitter(order=(0, 1, 2, 3))"] = lambda: fixed_order(inputs[2])
    fns.update({
        "fast/pipeline": lambda: fast(x),
        "fast/make_params": lambda: fast.make_params(x.shape, device),
        "fast/crop_flip": lambda: fast._crop_flip(x, params),
        "fast/brightness": lambda: fast._brightness(crop, factor[0]),
        "fast/contrast": lambda: fast._contrast(crop, factor[1]),
        "fast/saturation": lambda: fast._saturation(crop, factor[2]),
        "fast/hue": lambda: fast._hue(crop, factor[3]),
    })
    with torch.no_grad():
        times = time_workloads(fns, device, cfg.repeats, cfg.warmup, clock)
    return {k: v * 1e3 for k, v in times.items()}


def torchvision_v2_views(image_size: int) -> Callable[[Tensor], Tensor]:
    """The same views with torchvision transforms v2 on one uint8 image, as lightly and solo-learn users run them."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.2, 1.0), ratio=CROP_RATIO, antialias=True),
        v2.RandomHorizontalFlip(FLIP_P),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P),
        v2.RandomGrayscale(GRAYSCALE_P),
    ])


class _TwoViews(torch.utils.data.Dataset):
    """Two torchvision v2 views of each uint8 image of a CPU tensor."""

    def __init__(self, images: Tensor, image_size: int) -> None:
        self.images, self.transform = images, torchvision_v2_views(image_size)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.transform(self.images[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[Any], Any], batches: Any, device: torch.device,
               clock: str = "wall") -> tuple[float, int]:
    """Run ``step`` on every item of ``batches`` back to back; returns (seconds, steps), the device idle at both ends.

    On the CPU ``clock="cpu"`` counts this process's CPU time (not the ``DataLoader`` workers').
    """
    read_clock = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter
    _sync(device)
    start, count = read_clock(), 0
    for item in batches:
        step(item)
        count += 1
    _sync(device)
    return read_clock() - start, count


def run_trainer(cfg: TrainerBenchConfig, clock: str = "wall") -> dict[str, Any]:
    """Time the trainer suite: per-call medians, ratios, then whole epochs (baseline, IDAA, torchvision v2 workers)."""
    device = torch.device(cfg.device)
    t_build = time.perf_counter()
    work, steps, data = build_trainer_workloads(cfg)
    times = time_workloads(work.fns, device, cfg.repeats, cfg.warmup, clock)
    ms = {k: v * 1e3 for k, v in times.items()}
    b = cfg.batch_size
    record: dict[str, Any] = {
        "config": asdict(cfg),
        "label": cfg.label,
        "clock": "cuda-events" if device.type == "cuda" else clock,
        "ms": ms,
        "ratios": {
            "plain_step/model_only": times["plain_step"] / times["model_only"],
            "plain_step_kornia/model_only": times["plain_step_kornia"] / times["model_only"],
            "views_fast/plain_step": times["views_fast"] / times["plain_step"],
            "views_kornia/plain_step": times["views_kornia"] / times["plain_step"],
            "views_kornia/views_fast": times["views_kornia"] / times["views_fast"],
            "idaa_step/plain_step": times["idaa_step"] / times["plain_step"],
            "model_only_3views/model_only": times["model_only_3views"] / times["model_only"],
            # The IDAA step's own limit: its model work on three ready views, plus the attack alone, plus the views.
            "idaa_limit/plain_step": (times["model_only_3views"] + times["attack_only"] + times["views_fast"])
            / times["plain_step"],
            "idaa_step/idaa_limit": times["idaa_step"]
            / (times["model_only_3views"] + times["attack_only"] + times["views_fast"]),
        },
        "images_per_s_from_medians": {k: b / times[k] for k in ("model_only", "plain_step", "idaa_step")},
        "memory": measure_memory({k: work.fns[k] for k in ("plain_step", "idaa_step")}, device) or "n/a (CPU)",
        **work.meta,
    }
    if cfg.epoch_images:
        record["epochs"] = _time_epochs(cfg, steps, data, device, clock)
    record["setup_and_timing_s"] = round(time.perf_counter() - t_build, 2)
    return record


def _time_epochs(cfg: TrainerBenchConfig, steps: dict[str, Callable[[Any], Any]], data: Tensor,
                 device: torch.device, clock: str) -> dict[str, Any]:
    """One timed epoch of ``cfg.epoch_images`` images (``drop_last`` batches) per way of training."""
    n = cfg.epoch_images
    if n > data.shape[0]:  # more images than generated: cycle through the generated ones
        data = data.repeat((n + data.shape[0] - 1) // data.shape[0], 1, 1, 1)[:n]

    def device_batches(epoch: int) -> Any:
        for index in shard_indices(n, cfg.batch_size, cfg.seed, epoch):
            yield data[index.to(device, non_blocking=True)]

    result: dict[str, Any] = {"images": n, "batch_size": cfg.batch_size, "steps": n // cfg.batch_size}
    for name in ("baseline", "idaa"):
        seconds, count = time_steps(steps[name], device_batches(0), device, clock)
        result[name] = {"seconds": seconds, "images_per_s": count * cfg.batch_size / seconds}
    if cfg.loader_workers:
        loader = torch.utils.data.DataLoader(
            _TwoViews(data[:n].cpu(), cfg.image_size), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
            num_workers=cfg.loader_workers, pin_memory=device.type == "cuda", persistent_workers=True,
            prefetch_factor=4)

        def fed(epoch_loader: Any) -> Any:
            for v1, v2 in epoch_loader:
                yield (v1.to(device, non_blocking=True).float().div_(255), v2.to(device, non_blocking=True)
                       .float().div_(255))

        time_steps(steps["model_fed"], fed(loader), device, clock)  # first epoch: workers start, cuDNN warms up
        seconds, count = time_steps(steps["model_fed"], fed(loader), device, clock)
        result["torchvision_v2_workers"] = {"seconds": seconds, "images_per_s": count * cfg.batch_size / seconds,
                                            "workers": cfg.loader_workers, "clock": "wall" if clock != "cpu" else
                                            "main process CPU time (workers not counted)"}
        del loader
    return result


# -- timing -------------------------------------------------------------------------------------------------------------
def time_workloads(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                   warmup: int, clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each workload.

    Repeats run round-robin (one call of each workload per round), so that a slow-down of a shared machine hits
    all workloads alike and ratios within one run stay meaningful. On CUDA every call is timed with CUDA events,
    starting from an idle device. On the CPU ``clock="wall"`` uses ``time.perf_counter`` and ``clock="cpu"`` the
    process CPU time (``time.process_time``), which, with one thread, does not count time the process spent
    descheduled on a shared machine.
    """
    read_clock = time.process_time if clock == "cpu" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = read_clock()
                fn()
                samples[name].append(read_clock() - t0)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure_memory(fns: dict[str, Callable[[], Any]], device: torch.device) -> dict[str, dict[str, int]]:
    """Per workload on CUDA: peak bytes allocated above the baseline during one call, and bytes still allocated
    after its result is dropped (should be 0 for the transform). Empty on other devices."""
    if device.type != "cuda":
        return {}
    report = {}
    for name, fn in fns.items():
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - baseline
        del result
        torch.cuda.synchronize(device)
        report[name] = {"peak_bytes": peak, "retained_bytes": torch.cuda.memory_allocated(device) - baseline}
    return report


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux), for a coarse CPU memory figure."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


def derive(times: dict[str, float]) -> dict[str, float]:
    """The part sum ``c`` and the headline ratios from per-workload medians."""
    parts = sum(times[k] for k in PART_KEYS)
    return {
        "c_parts_sum": parts,
        "b/c": times["b_idaa_anchor"] / parts,
        "b_no_anchor/c": times["b_idaa_no_anchor"] / parts,
        "b/d": times["b_idaa_anchor"] / times["d_pixel_fgsm"],
        "e_idaa/e_plain": times["e_step_idaa"] / times["e_step_plain"],
    }


def run_config(cfg: BenchConfig, only: list[str] | None = None, clock: str = "wall") -> dict[str, Any]:
    """Build, time and measure one ``transform`` configuration; returns a JSON-ready record."""
    device = torch.device(cfg.device)
    t_build = time.perf_counter()
    work = build_workloads(cfg)
    fns = work.fns if only is None else {k: v for k, v in work.fns.items() if k in only}
    rss0 = _rss_bytes() if device.type == "cpu" else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    times = time_workloads(fns, device, cfg.repeats, cfg.warmup, clock)
    record: dict[str, Any] = {
        "config": asdict(cfg),
        "label": cfg.label,
        "clock": "cuda-events" if device.type == "cuda" else clock,
        "setup_and_timing_s": round(time.perf_counter() - t_build, 2),
        "ms": {k: v * 1e3 for k, v in times.items()},
        **work.meta,
    }
    if only is None:
        derived = derive(times)
        record["ratios"] = {k: v for k, v in derived.items() if k != "c_parts_sum"}
        record["ms"]["c_parts_sum"] = derived["c_parts_sum"] * 1e3
    record["memory"] = measure_memory(fns, device) or "n/a (CPU)"
    if rss0 is not None:
        rss1 = _rss_bytes()
        record["rss_delta_bytes"] = None if rss1 is None else rss1 - rss0
    return record
