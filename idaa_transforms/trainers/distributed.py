"""Helpers for ``torchrun`` / DistributedDataParallel runs; every function also works in a single process.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them,
picks the device (``cuda:LOCAL_RANK``) and the backend (NCCL on GPUs, gloo on CPUs) and starts the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistEnv", "setup", "cleanup", "all_gather_with_grad", "all_reduce_mean", "shard_indices"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size`` and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistEnv:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``) and choose this process's device.

    Args:
        device: ``"cuda"``, ``"cpu"``, ``"cuda:1"``... ``None`` picks CUDA when available. Under ``torchrun`` a bare
            ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for but CUDA is not available; use --device cpu.")
    if dev.type == "cuda" and dev.index is None:  # set_device needs an index
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, dev, owns_group)


def cleanup(env: DistEnv) -> None:
    """Destroy the process group if :func:`setup` started it (a caller's own group is left alone)."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), dist.get_world_size(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank computed the same global loss: sum its gradients
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks, keeping the gradient path to each rank's ``x``.

    Every rank computes the loss of the global batch; the backward sums those gradients, so after
    DistributedDataParallel averages parameter gradients they equal the gradient of the single-process
    global-batch loss. Works on NCCL and gloo; returns ``x`` unchanged in a single process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a copy); ``x`` itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def shard_indices(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """This rank's index batches for one epoch, like a shuffling ``DistributedSampler`` with ``drop_last``.

    The permutation depends only on ``(seed, epoch)``, so every rank agrees on it and a resumed run replays it.
    ``batch_size`` is the global batch; each rank gets ``batch_size // world_size`` rows of every global batch.

    Example:
        >>> [b.tolist() for b in shard_indices(5, 2, seed=0, epoch=0)]
        [[4, 0], [1, 3]]
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size: {batch_size} is not divisible by the number of processes ({world_size}).")
    if batch_size > n:
        raise ValueError(f"batch_size: {batch_size} is larger than the dataset ({n} samples).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = batch_size // world_size
    return [order[start + rank * per_rank : start + (rank + 1) * per_rank]
            for start in range(0, n - n % batch_size, batch_size)]
