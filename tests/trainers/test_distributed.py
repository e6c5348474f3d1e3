"""Distributed training on CPUs with gloo: the gradient-keeping all-gather and a 2-process torchrun run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from idaa_transforms.losses import nt_xent
from idaa_transforms.trainers.distributed import all_gather_with_grad, all_reduce_mean, shard_indices

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        g = torch.Generator().manual_seed(0)
        x1, x2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
        weight = torch.randn(5, 3, generator=g)
        # Reference: one process, the global batch.
        w_ref = weight.clone().requires_grad_(True)
        nt_xent(x1 @ w_ref, x2 @ w_ref, 0.5).backward()
        # Distributed: each rank embeds its half, the loss is over the gathered global batch, and the
        # parameter gradients are averaged over ranks as DistributedDataParallel does.
        w = weight.clone().requires_grad_(True)
        rows = slice(rank * 4, (rank + 1) * 4)
        z1, z2 = all_gather_with_grad(x1[rows] @ w), all_gather_with_grad(x2[rows] @ w)
        torch.testing.assert_close(z1, (x1 @ weight))  # gathered in rank order
        loss = nt_xent(z1, z2, 0.5)
        loss.backward()
        grad = all_reduce_mean(w.grad)
        torch.testing.assert_close(loss, nt_xent(x1 @ weight, x2 @ weight, 0.5))
        torch.testing.assert_close(grad, w_ref.grad, rtol=1e-5, atol=1e-6)
        # Without the sum over ranks in the backward, the gradient would be 1/WORLD of this.
        assert not torch.allclose(grad, w_ref.grad / WORLD)
        # The shards of one epoch partition a global batch order.
        mine = torch.cat(shard_indices(10, 4, seed=3, epoch=1, rank=rank, world_size=WORLD))
        everyone = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(everyone, mine)
        assert len(set(torch.cat(everyone).tolist())) == 8
    finally:
        dist.destroy_process_group()


def test_all_gather_gradient_matches_global_batch():
    mp.spawn(_gather_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_all_gather_is_identity_in_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def test_torchrun_two_processes(tmp_path, tiny_vae_dir):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "examples" / "simclr_cifar.py"), "--dataset", "photos", "--arch", "small_cnn",
           "--crops-per-photo", "16", "--batch-size", "32", "--epochs", "1", "--probe-steps", "20",
           "--device", "cpu", "--no-progress", "--vae", tiny_vae_dir, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["knn_acc"] is not None and rows[0]["loss_adv"] is not None
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == WORLD and 0 <= results["linear_acc"] <= 1
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng"]) == WORLD
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the raw model, not the DDP wrapper


def test_bare_cuda_device_gets_an_index(monkeypatch):
    """``--device cuda`` in a single process must name a concrete device: ``torch.cuda.set_device`` needs one."""
    from idaa_transforms.trainers import distributed as D

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: chosen.append(torch.device(dev)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = D.setup("cuda")
    assert env.device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]
