"""Speed of ``IDAATransform`` against its own lower bound, a pixel-space attack and a plain SimCLR step.

For every configuration (VAE, image size, batch size, precision, compilation) one run times, on the same inputs:

(a) ``views``            two kornia SimCLR views (RandomResizedCrop, flip, ColorJitter p=0.8, RandomGrayscale);
(b) ``idaa_anchor``      ``IDAATransform`` end to end with ``anchor=encoder(x)`` passed, as a trainer does;
    ``idaa_no_anchor``   the same without ``anchor`` (one more, gradient-free, encoder pass);
(c) ``parts``            the sum of the algorithm's necessary parts, each timed alone:
    ``c1_encode``        posterior mean ``mu`` of the VAE (input normalisation, conv trunk, ``fc_mu``), no gradient;
    ``c2_decode_fwd_bwd``  ``G(mu)`` with gradient, ``R = x - G(mu)``, ``x_adv = G + R``, backward to the latent;
    ``c3_encoder_fwd_bwd`` encoder forward on ``x_adv`` plus NT-Xent against the anchor, backward to the input;
    ``c4_step_decode``   the signed step on the latent and the final gradient-free decode plus residual;
(d) ``pixel_fgsm``       a one-step pixel-space FGSM of the same encoder and loss, ``x + eps * sign(grad_x L)``;
(e) ``step_plain``       a SimCLR training step: views, encoder forward/backward on both, optimizer step;
    ``step_idaa``        the same plus ``IDAA(v1, anchor=z1.detach())``, a forward of ``x_adv`` through the
                         adversarial BatchNorms and the backward of the combined loss.

Ratios: ``b/c`` (overhead of the transform over its necessary work), ``b/d`` (latent-space attack against a pixel-space
one), ``e_idaa/e_plain`` (cost of IDAA in training). Timings are medians over ``--repeats`` round-robin repeats after
warm-up; on CUDA each repeat is timed with CUDA events after a ``torch.cuda.synchronize()``.

Measured points: every batch size at the first image size and every image size at the first batch size (the scaling
axes), and the ``--amp``/``--compile`` variants at the first batch and image size.

Usage::

    python benchmarks/bench.py                                   # CPU defaults (small_cnn, a few minutes)
    python benchmarks/bench.py --device cuda --arch resnet18 --batch-sizes 256,512,1024 --image-sizes 32,96,224 \
        --amp bf16,fp16 --compile transform,modules --out results/gpu
    python benchmarks/bench.py --device cuda --vaes paper --batch-sizes 512 --image-sizes 32 --profile --out prof
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig, adversarial_bn, convert_to_dual_bn, nt_xent
from idaa_transforms.trainers.augment import simclr_views

__all__ = [
    "BenchConfig",
    "Workloads",
    "build_encoder",
    "build_vae",
    "build_workloads",
    "time_workloads",
    "run_config",
    "plan_configs",
    "main",
]

PART_KEYS = ("c1_encode", "c2_decode_fwd_bwd", "c3_encoder_fwd_bwd", "c4_step_decode")
RATIO_KEYS = ("b/c", "b_no_anchor/c", "b/d", "e_idaa/e_plain")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("none", "transform", "modules")


# -- configuration -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """One measured point.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        arch: encoder under training, ``"resnet18"`` or ``"small_cnn"``.
        vae: ``"paper"`` (``VAEConfig()`` width 128, latent 512, built at ``image_size``) or ``"shipped"``
            (``IdentityVAE.from_pretrained()``, 32 px; other image sizes are resized by the transform).
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


def build_encoder(arch: str, image_size: int, projection_dim: int = 128) -> nn.Module:
    """Backbone plus a 2-layer projection head, with dual (clean/adversarial) BatchNorms, in train mode.

    ``resnet18``: torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 ``conv1``, no max-pool) up to 64 px and
    the standard ImageNet stem above (a stride-1 stem at 224 px does not fit a 1024-image batch in memory).
    ``small_cnn``: four conv/BN/ReLU layers, for CPU runs.
    """
    if arch == "resnet18":
        from torchvision.models import resnet18

        backbone = resnet18()
        if image_size <= 64:
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            backbone.maxpool = nn.Identity()
        backbone.fc = nn.Identity()
        features = 512
    elif arch == "small_cnn":
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in ((32, 1), (64, 2), (128, 2), (128, 2)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = c_in
    elif arch == "tiny_cnn":  # for smoke tests only
        backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = 8
    else:
        raise ValueError(f"arch: expected 'resnet18' or 'small_cnn', got {arch!r}.")
    head = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, projection_dim))
    return convert_to_dual_bn(nn.Sequential(backbone, head)).train()


# -- workloads -----------------------------------------------------------------------------------------------------------
@dataclass
class Workloads:
    """Callables to time (each runs one batch) and what they share."""

    fns: dict[str, Callable[[], Any]]
    idaa: IDAATransform
    encoder: nn.Module
    x: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def build_workloads(cfg: BenchConfig) -> Workloads:
    """Models, inputs and the timed callables of one configuration."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.vae, cfg.image_size, device)
    encoder = build_encoder(cfg.arch, cfg.image_size).to(device)
    views = simclr_views(cfg.image_size, min_scale=0.08).to(device)  # the trainers' views, ImageNet-style crops
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    idaa = IDAATransform(vae, encoder=encoder, eps=cfg.eps, use_adversarial_bn=True).to(device)
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

    # Fixed intermediate tensors for the separately timed parts (their values do not change the work).
    with torch.no_grad(), amp:
        anchor = net(x).detach()
        mu = idaa._encode(x)
        g = idaa._decode(mu, x)
    residual = (x - g.to(x.dtype)).detach()
    grad_x_adv = torch.randn_like(x)
    grad_z = torch.randn_like(mu)
    scale, shift = idaa._scale, idaa._shift

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
        # The posterior mean only: the normalisation, the conv trunk and ``fc_mu`` (the log-variance is not needed).
        with torch.no_grad(), amp:
            v = x * scale + shift
            if cfg.image_size != vae.config.image_size:
                size = (vae.config.image_size,) * 2
                v = F.interpolate(v, size=size, mode="bilinear", antialias=True, align_corners=False)
            return vae.fc_mu(vae.encoder_trunk(vae.encoder_stages(v)).flatten(1))

    def c2_decode_fwd_bwd() -> Tensor:
        # G(z) in the caller's space, the residual R = x - G(mu) and x_adv = G(z) + R, then backward to z.
        with torch.enable_grad(), amp:
            z = mu.detach().requires_grad_(True)
            g = idaa._decode(z, x).to(x.dtype)
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
            return vae_decode_to_pixels(z) + residual

    def vae_decode_to_pixels(z: Tensor) -> Tensor:
        g = vae_decode(z)
        if g.shape[-2:] != x.shape[-2:]:
            g = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ((g - shift) / scale).to(x.dtype)

    def pixel_fgsm() -> Tensor:
        with torch.enable_grad(), amp, adversarial_bn(True):
            x_in = x.detach().requires_grad_(True)
            loss = nt_xent(anchor, net(x_in).flatten(1), idaa.temperature)
            grad = torch.autograd.grad(loss, x_in)[0]
        return (x + (8 / 255) * grad.sign()).clamp(0, 1)

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
    return Workloads(fns, idaa, encoder, x, meta)


# -- timing -------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def run_config(cfg: BenchConfig, only: Sequence[str] | None = None, clock: str = "wall") -> dict[str, Any]:
    """Build, time and measure one configuration; returns a JSON-ready record."""
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
        record["ratios"] = {k: v for k, v in derive(times).items() if k != "c_parts_sum"}
        record["ms"]["c_parts_sum"] = derive(times)["c_parts_sum"] * 1e3
    memory = measure_memory(fns, device)
    record["memory"] = memory or "n/a (CPU)"
    if rss0 is not None:
        rss1 = _rss_bytes()
        record["rss_delta_bytes"] = None if rss1 is None else rss1 - rss0
    return record


# -- planning and reporting ---------------------------------------------------------------------------------------------
def plan_configs(base: BenchConfig, vaes: Sequence[str], batch_sizes: Sequence[int], image_sizes: Sequence[int],
                 amps: Sequence[str], compiles: Sequence[str]) -> list[BenchConfig]:
    """Batch-size axis at the first image size, image-size axis at the first batch size, variants at the base point.

    Order (what a time budget cuts last comes first): the first VAE's axes, its ``amps`` and ``compiles`` variants
    at the base point, then the other VAEs' axes. The shipped VAE is 32 px only: at other sizes the transform would
    mostly measure its resize, so its image-size axis is skipped.
    """
    b0, s0 = batch_sizes[0], image_sizes[0]

    def axes(vae: str) -> list[BenchConfig]:
        point = replace(base, vae=vae, batch_size=b0, image_size=s0)
        sizes = [] if vae == "shipped" else image_sizes[1:]
        return [point] + [replace(point, batch_size=b) for b in batch_sizes[1:]] + [
            replace(point, image_size=s) for s in sizes]

    first = replace(base, vae=vaes[0], batch_size=b0, image_size=s0)
    configs = axes(vaes[0])
    configs += [replace(first, amp=a) for a in amps]
    configs += [replace(first, compile=c) for c in compiles if c != "none"]
    for vae in vaes[1:]:
        configs += axes(vae)
    return configs


def _fmt_mem(record: dict[str, Any], key: str) -> str:
    memory = record.get("memory")
    if not isinstance(memory, dict) or key not in memory:
        return "n/a"
    return f"{memory[key]['peak_bytes'] / 2**20:.0f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per configuration: times in ms, ratios, peak memory (MiB, CUDA only)."""
    head = ("| config | a views | b IDAA (anchor) | b IDAA (no anchor) | c parts | d pixel FGSM | e plain | e IDAA "
            "| b/c | b/d | e_idaa/e_plain | peak MiB b / e_idaa | retained B after b |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * (head.count("|") - 3))
            continue
        ms, ratios = r["ms"], r["ratios"]
        memory = r.get("memory")
        retained = memory["b_idaa_anchor"]["retained_bytes"] if isinstance(memory, dict) else "n/a"
        lines.append(
            f"| {r['label']} | {ms['a_views']:.1f} | {ms['b_idaa_anchor']:.1f} | {ms['b_idaa_no_anchor']:.1f} "
            f"| {ms['c_parts_sum']:.1f} | {ms['d_pixel_fgsm']:.1f} | {ms['e_step_plain']:.1f} | {ms['e_step_idaa']:.1f} "
            f"| {ratios['b/c']:.3f} | {ratios['b/d']:.2f} | {ratios['e_idaa/e_plain']:.2f} "
            f"| {_fmt_mem(r, 'b_idaa_anchor')} / {_fmt_mem(r, 'e_step_idaa')} | {retained} |"
        )
    parts = ["", "Parts of c (ms): " + ", ".join(PART_KEYS), ""]
    parts.append("| config | " + " | ".join(PART_KEYS) + " |")
    parts.append("|---|" + "---|" * len(PART_KEYS))
    for r in records:
        if "error" not in r:
            parts.append(f"| {r['label']} | " + " | ".join(f"{r['ms'][k]:.1f}" for k in PART_KEYS) + " |")
    return "\n".join(lines + parts) + "\n"


def profile_transform(cfg: BenchConfig, out: Path | None, calls: int = 3) -> str:
    """``torch.profiler`` table of ``IDAATransform`` (with anchor) and of the separately run parts at ``cfg``.

    With ``out``, also writes Chrome traces (``profile_idaa.json``, ``profile_parts.json``) and the tables.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(cfg.device)
    work = build_workloads(cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    groups = {"idaa": ["b_idaa_anchor"], "parts": list(PART_KEYS)}
    tables = []
    for name, keys in groups.items():
        for key in keys:
            work.fns[key]()
        _sync(device)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                for key in keys:
                    work.fns[key]()
            _sync(device)
        table = prof.key_averages().table(sort_by=sort_by, row_limit=20)
        tables.append(f"## {name}: {', '.join(keys)} x {calls} ({cfg.label})\n\n{table}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(out / f"profile_{name}.json"))
    report = "\n\n".join(tables)
    if out is not None:
        (out / "profile.txt").write_text(report)
    return report


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _csv(kind: type, text: str) -> list[Any]:
    return [kind(t) for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default=None, choices=["resnet18", "small_cnn"],
                        help="encoder; default resnet18 on CUDA, small_cnn on CPU")
    parser.add_argument("--vaes", default="paper,shipped", help="comma-separated: paper, shipped")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 256,512,1024 on CUDA, 64,32,128 on CPU")
    parser.add_argument("--image-sizes", default="32,64,96", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 on CUDA, 5 on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", default="", help="extra autocast variants at the base point: bf16, fp16 or both")
    parser.add_argument("--compile", default="", help="extra variants at the base point: transform, modules")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="CPU timer: wall time, or process CPU time (use with --threads 1 on a shared machine)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the remaining configurations once this many seconds have passed")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the transform and its parts at the first batch and image size")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as a trainer would run fp32
    base = BenchConfig(device=args.device, arch=args.arch or ("resnet18" if cuda else "small_cnn"),
                       repeats=args.repeats or (10 if cuda else 5), warmup=args.warmup)
    batch_sizes = _csv(int, args.batch_sizes or ("256,512,1024" if cuda else "64,32,128"))
    configs = plan_configs(base, _csv(str, args.vaes), batch_sizes, _csv(int, args.image_sizes),
                           _csv(str, args.amp), _csv(str, args.compile))
    info = machine_info(device)
    print(json.dumps(info), flush=True)
    if args.profile:
        print(profile_transform(configs[0], Path(args.out) if args.out else None))
        return []
    start, records = time.perf_counter(), []
    for cfg in configs:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            records.append({"label": cfg.label, "config": asdict(cfg), "error": "skipped (time budget)"})
            print(f"{cfg.label}: skipped (time budget)", flush=True)
            continue
        try:
            record = run_config(cfg, clock=args.clock)
        except Exception as err:  # keep the other points when one fails (e.g. out of memory)
            record = {"label": cfg.label, "config": asdict(cfg), "error": f"{type(err).__name__}: {err}"[:300]}
        records.append(record)
        if "error" in record:
            print(f"{cfg.label}: {record['error']}", flush=True)
        else:
            ms, ratios = record["ms"], record["ratios"]
            print(f"{cfg.label}: b={ms['b_idaa_anchor']:.1f}ms c={ms['c_parts_sum']:.1f}ms "
                  + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()), flush=True)
        if cuda:
            torch.cuda.empty_cache()
        if args.out:  # after every point, so that an interrupted run keeps what it measured
            write_results(Path(args.out), info, records)
    print(markdown_table(records))
    return records


def write_results(out: Path, info: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """``results.json`` (everything) and ``results.md`` (machine, command and tables) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": info, "records": records}, indent=2))
    table = markdown_table(records)
    (out / "results.md").write_text(f"# IDAA benchmark\n\n```\n{json.dumps(info, indent=2)}\n```\n\n{table}")


if __name__ == "__main__":
    main()
