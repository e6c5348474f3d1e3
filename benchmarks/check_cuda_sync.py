"""Check that ``IDAATransform.forward`` makes no host-device synchronisation on CUDA and leaves no memory behind.

Run on a CUDA machine: ``python benchmarks/check_cuda_sync.py``. Exits non-zero on a violation.
"""

from __future__ import annotations

import torch
from torch import nn

from idaa_transforms import IDAATransform, IdentityVAE, VAEConfig


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("check_cuda_sync: needs a CUDA device.")
    device = torch.device("cuda")
    torch.manual_seed(0)
    vae = IdentityVAE(VAEConfig(width=64, latent_dim=128)).to(device)
    encoder = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64)).to(device)
    x = torch.rand(256, 3, 32, 32, device=device)
    results = {}
    for name, options in {"fgsm": {}, "pgd3_l2_random_start": dict(steps=3, norm="l2", random_start=True),
                          "p=0.5": dict(p=0.5, generator=0)}.items():
        idaa = IDAATransform(vae, encoder=encoder, eps=0.1, **options)
        idaa(x)  # warm-up (cuDNN autotuning, allocator)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = idaa(x)
            sync_free = True
        except RuntimeError as err:
            sync_free = False
            print(f"{name}: synchronisation inside forward: {err}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        retained = torch.cuda.memory_allocated() - before - (out.numel() * out.element_size() if sync_free else 0)
        del out
        results[name] = (sync_free, retained)
        print(f"{name}: sync-free={sync_free}, bytes retained after forward besides the output={retained}")
    if not all(ok and retained <= 0 for ok, retained in results.values()):
        raise SystemExit(1)
    print("OK: no host-device synchronisation, nothing retained")


if __name__ == "__main__":
    main()
