"""Check that ``IDAATransform.forward`` and the trainer's step make no host-device synchronisation on CUDA.

Run on a CUDA machine: ``python benchmarks/check_cuda_sync.py``. Every checked call runs under
``torch.cuda.set_sync_debug_mode("error")``, so any synchronising call inside it (``.item()``, ``nonzero``, a blocking
copy) raises. After the transform's forward returns, the memory still allocated must be the output alone. The
trainer's step (the trainer's own ``two_views`` of a uint8 batch already on the device and ``train_step``: two
forwards, the IDAA view, the adversarial forward, the loss, backward and Adam step, under bf16 autocast) is checked
with the kornia views too, for comparison. Exits non-zero on a violation of the transform or of the fast step.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package

from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig, convert_to_dual_bn  # noqa: E402
from idaa_transforms.views import simclr_views  # noqa: E402
from idaa_transforms.trainers.engine import train_step, two_views  # noqa: E402
from idaa_transforms.trainers.methods import build_method  # noqa: E402


def _cases() -> dict[str, dict[str, Any]]:
    """Transform options, and whether to pass the anchor / run under autocast (bf16 or fp16), per checked case."""
    return {
        "fgsm": {},
        "fgsm_anchor": {"anchor": True},
        "fgsm_anchor_bf16": {"anchor": True, "amp": torch.bfloat16},
        "fgsm_anchor_fp16": {"anchor": True, "amp": torch.float16},  # the attack in bf16 within fp16 autocast
        "fgsm_adversarial_bn": {"anchor": True, "options": {"use_adversarial_bn": True}},
        "pgd3_l2_random_start": {"options": {"steps": 3, "norm": "l2", "random_start": True}},
        "p=0.5": {"options": {"p": 0.5, "generator": 0}},
        "clamp_normalised": {"options": {"clamp": True, "mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}},
    }


def check(name: str, idaa: IDAATransform, x: torch.Tensor, anchor: torch.Tensor | None,
          amp: torch.dtype | None) -> tuple[bool, int]:
    """One warm-up call, then one call under the sync debug mode; returns (sync-free, bytes retained)."""
    autocast = torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
    with autocast:
        idaa(x, anchor=anchor)  # warm-up: cuDNN autotuning, allocator growth
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        with autocast:
            out = idaa(x, anchor=anchor)
    except RuntimeError as err:
        print(f"{name}: synchronisation inside forward: {err}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    output_bytes = out.numel() * out.element_size() if out is not None else 0
    retained = torch.cuda.memory_allocated() - before - output_bytes
    del out
    return output_bytes > 0, retained


def check_trainer_step(vae: IdentityVAE, backend: str) -> bool:
    """One warm-up step, then one step under the sync debug mode; returns whether it made no synchronisation."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = convert_to_dual_bn(build_method("simclr", "small_cnn")).to(device).train()
    idaa = IDAATransform(vae, encoder=model.encoder, eps=0.1, temperature=model.temperature, use_adversarial_bn=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-6)
    views = simclr_views(32, backend=backend)
    data = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, device=device)
    index = torch.randperm(1024, device=device)[:256]

    def step() -> torch.Tensor:  # as the trainer's epoch loop runs it
        x = data[index]
        if backend == "kornia":
            x = x.float().div_(255)
        return train_step(model, optimizer, *two_views(views, x), adversary=idaa, amp=torch.bfloat16)

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return True
    except RuntimeError as err:
        print(f"trainer_step_{backend}_views: synchronisation inside the step: {err}")
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("check_cuda_sync: needs a CUDA device.")
    device = torch.device("cuda")
    torch.manual_seed(0)
    vae = IdentityVAE(VAEConfig(width=64, latent_dim=128)).to(device)
    encoder = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64))
    encoder = convert_to_dual_bn(encoder).to(device).train()
    x = torch.rand(256, 3, 32, 32, device=device)
    with torch.no_grad():
        anchor = encoder(x)
    failures = 0
    for name, case in _cases().items():
        idaa = IDAATransform(vae, encoder=encoder, eps=0.1, **case.get("options", {})).to(device)
        sync_free, retained = check(name, idaa, x, anchor if case.get("anchor") else None, case.get("amp"))
        print(f"{name}: sync-free={sync_free}, bytes retained after forward besides the output={retained}")
        failures += (not sync_free) or retained > 0
    for backend in ("fast", "kornia"):
        sync_free = check_trainer_step(vae, backend)
        print(f"trainer_step_{backend}_views: sync-free={sync_free}")
        failures += backend == "fast" and not sync_free
    if failures:
        raise SystemExit(f"check_cuda_sync: {failures} case(s) failed")
    print("OK: no host-device synchronisation, nothing retained")


if __name__ == "__main__":
    main()
