"""Check that ``IDAATransform.forward`` makes no host-device synchronisation on CUDA and leaves no memory behind.

Run on a CUDA machine: ``python benchmarks/check_cuda_sync.py``. Every forward runs under
``torch.cuda.set_sync_debug_mode("error")``, so any synchronising call inside it (``.item()``, ``nonzero``, a blocking
copy) raises. After the forward returns, the memory still allocated must be the output alone. Exits non-zero on a
violation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig, convert_to_dual_bn


def _cases() -> dict[str, dict[str, Any]]:
    """Transform options, and whether to pass the anchor / run under bf16 autocast, per checked case."""
    return {
        "fgsm": {},
        "fgsm_anchor": {"anchor": True},
        "fgsm_anchor_bf16": {"anchor": True, "amp": torch.bfloat16},
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
    if failures:
        raise SystemExit(f"check_cuda_sync: {failures} case(s) failed")
    print("OK: no host-device synchronisation, nothing retained")


if __name__ == "__main__":
    main()
