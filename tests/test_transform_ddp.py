"""IDAATransform held by a DistributedDataParallel model (2 CPU processes, gloo), as a LightningModule holds it."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import batch, make_vae
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from idaa_transforms import IDAATransform, nt_xent

WORLD = 2
STEPS = 3


class SimCLRWithIDAA(nn.Module):
    """Backbone + projection head, with the transform as an attribute and used inside ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * 15 * 15, 16)
        self.encoder = nn.Sequential(self.backbone, self.head)
        self.idaa = IDAATransform(make_vae(), encoder=self.encoder, eps=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        x_adv = self.idaa(x, anchor=z.detach())
        return nt_xent(z, self.encoder(x_adv))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_worker(rank: int, port: int, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = SimCLRWithIDAA()
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        vae_tensors = {id(t) for t in [*model.idaa.vae.parameters(), *model.idaa.vae.buffers()]}
        seen = {id(p) for group in optimizer.param_groups for p in group["params"]}
        losses = []
        for step in range(STEPS):
            loss = ddp(batch(8, seed=10 * rank + step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        everyone = [torch.empty_like(weights) for _ in range(WORLD)]
        dist.all_gather(everyone, weights)
        results[rank] = {
            "losses": losses,
            "optimiser_sees_vae": bool(vae_tensors & seen),
            "state_has_vae": any("vae" in k for k in model.state_dict()),
            "vae_grads": any(p.grad is not None for p in model.idaa.vae.parameters()),
            "ranks_agree": all(torch.equal(w, weights) for w in everyone),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_model_holding_the_transform_trains():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_train_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
        results = dict(results)
    assert sorted(results) == list(range(WORLD))
    for result in results.values():
        assert len(result["losses"]) == STEPS and all(torch.isfinite(torch.tensor(result["losses"])))
        assert not result["optimiser_sees_vae"] and not result["state_has_vae"] and not result["vae_grads"]
        assert result["ranks_agree"]  # DDP averaged the gradients: identical weights after 3 steps
