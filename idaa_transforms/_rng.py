"""Random-generator state for checkpoints, so that a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rng_state", "set_rng_state"]


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global CPU generator's state, and the CUDA one of ``device`` when it is a CUDA device."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (tensors loaded onto any device are accepted)."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
