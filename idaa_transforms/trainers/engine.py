"""The training loop shared by every method: data, optimisation, IDAA, evaluation, checkpoints and outputs.

One training step on a batch ``x`` (on the device):

1. two views ``v1, v2`` of ``x`` with kornia (:func:`~idaa_transforms.trainers.augment.simclr_views`);
2. ``L(v1, v2)``, the method's loss over the global batch;
3. with IDAA, the adversarial view ``x_adv`` of ``v1`` from :class:`~idaa_transforms.IDAATransform`, attacking the
   method's own loss with the outputs of ``v1`` already computed, and ``L(v1, x_adv)`` with the ``x_adv`` forward
   inside :func:`~idaa_transforms.adversarial_bn` (separate adversarial BatchNorms unless disabled); with
   ``adversary="pixel_fgsm"`` the view comes from :class:`~idaa_transforms.pixel_fgsm.PixelFGSM` instead
   (one signed-gradient step of size ``pixel_eps`` on the pixels), everything else unchanged;
4. one optimiser step on ``L(v1, v2) + alpha * L(v1, x_adv)``.

Outputs in ``config.out`` (written by rank 0): ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (every
``save_every`` epochs; ``resume=True`` continues from it exactly), ``idaa_grid.png`` and ``results.json``.

Example:
    >>> cfg = TrainConfig(dataset="photos", arch="small_cnn", epochs=1)  # doctest: +SKIP
    >>> train(cfg)["knn_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from idaa_transforms._rng import rng_state, set_rng_state
from idaa_transforms.bn import adversarial_bn, convert_to_dual_bn
from idaa_transforms.data import DATASETS, load_images
from idaa_transforms.pixel_fgsm import PixelFGSM
from idaa_transforms.trainers import distributed as D
from idaa_transforms.trainers.augment import simclr_views
from idaa_transforms.trainers.evaluation import extract_features, knn_accuracy, linear_probe
from idaa_transforms.trainers.methods import METHODS, build_method
from idaa_transforms.trainers.models import ARCHS
from idaa_transforms.attack import call_without_buffer_updates
from idaa_transforms.transform import IDAATransform

__all__ = ["TrainConfig", "train", "load_split", "write_grid", "CHECKPOINT", "METRICS", "RESULTS", "GRID"]

CHECKPOINT, METRICS, RESULTS, GRID = "checkpoint.pt", "metrics.jsonl", "results.json", "idaa_grid.png"
OPTIMIZERS = ("adam", "sgd")
ADVERSARIES = ("idaa", "pixel_fgsm")
SCHEDULES = ("cosine", "constant")
# Settings that may change between a run and its resumption without changing what is computed.
_RESUMABLE = {"resume", "epochs", "stop_after", "save_every", "no_progress", "workers", "device", "out", "data_dir",
              "download"}


@dataclass
class TrainConfig:
    """Everything a training run depends on; the command line (:mod:`~idaa_transforms.trainers.cli`) builds one.

    The defaults are the IDAA paper's CIFAR SimCLR settings (Adam 3e-4, weight decay 1e-6, temperature 0.5,
    projection 512 -> 64, eps 0.1, alpha 1).
    """

    method: str = "simclr"
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = True
    crops_per_photo: int = 256
    image_size: int = 32
    arch: str = "resnet18"
    proj_hidden: int = 512
    proj_dim: int = 64
    temperature: float = 0.5
    byol_momentum: float = 0.99
    idaa: bool = True
    vae: str | None = None
    eps: float = 0.1
    adversary: str = "idaa"
    pixel_eps: float = 8 / 255
    alpha: float = 1.0
    attack_steps: int = 1
    dual_bn: bool = True
    epochs: int = 200
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 3e-4
    weight_decay: float = 1e-6
    schedule: str = "cosine"
    warmup_epochs: int = 0
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_every: int = 1
    probe_steps: int = 300
    amp: bool = False
    device: str | None = None
    seed: int = 0
    out: str = "runs/simclr"
    resume: bool = False
    save_every: int = 10
    stop_after: int | None = None
    workers: int = 4
    no_progress: bool = False

    def __post_init__(self) -> None:
        for name, choices in (("method", METHODS), ("dataset", DATASETS), ("arch", ARCHS),
                              ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("adversary", ADVERSARIES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}.")
        for name in ("epochs", "batch_size", "save_every", "knn_k", "knn_every", "probe_steps", "attack_steps",
                     "crops_per_photo", "image_size", "proj_hidden", "proj_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}.")
        for name in ("lr", "temperature", "knn_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}.")
        for name in ("eps", "pixel_eps", "alpha", "weight_decay", "warmup_epochs", "workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.byol_momentum <= 1:
            raise ValueError(f"byol_momentum: expected a number in [0, 1], got {self.byol_momentum!r}.")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after: expected a positive number of epochs or None, got {self.stop_after!r}.")


def load_split(cfg: TrainConfig, train: bool) -> tuple[Tensor, Tensor]:
    """A split of ``cfg.dataset`` as in-memory uint8 ``(images, labels)`` (see :func:`~idaa_transforms.data.load_images`)."""
    return load_images(cfg.dataset, cfg.data_dir, train=train, download=cfg.download, image_size=cfg.image_size,
                       crops_per_photo=cfg.crops_per_photo, seed=cfg.seed if cfg.dataset != "photos" else 0)


def _to_float(x: Tensor) -> Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LR factor: linear warmup, then cosine to 0 (or constant), as a function of the global step."""
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def write_grid(idaa: IDAATransform | PixelFGSM, model: nn.Module, x: Tensor, path: str | Path) -> None:
    """PNG rows: ``x``, ``G(x)``, ``R(x)`` (x4 around grey), ``x_adv`` and ``|x_adv - x|`` scaled to its maximum.

    ``model`` (a method in train mode) is attacked as in training; its BatchNorm statistics are left untouched.
    A :class:`PixelFGSM` has no decomposition: its grid has the rows ``x``, ``x_adv`` and ``|x_adv - x|``.
    """
    from torchvision.utils import save_image

    with torch.no_grad():
        parts = idaa.decompose(x) if isinstance(idaa, IDAATransform) else None
        out = call_without_buffer_updates(model, x)
    x_adv = model.adversarial_view(idaa, x, out)
    diff = (x_adv - x).abs()
    middle = [] if parts is None else [parts.identity, parts.residual * 4 + 0.5]
    rows = [x, *middle, x_adv, diff / diff.amax().clamp_min(1e-8)]
    grid = torch.cat([r.float().clamp(0, 1) for r in rows]).cpu()
    if grid.shape[-1] < 96:  # small images: enlarge (nearest) so the grid is readable in an image viewer
        grid = torch.nn.functional.interpolate(grid, scale_factor=96 // grid.shape[-1], mode="nearest")
    save_image(grid, str(path), nrow=x.shape[0], padding=2, pad_value=1.0)


class _DelayedScalar:
    """Hands a device scalar to the host without synchronising: a non-blocking copy into pinned memory now, read
    later, once a CUDA event says the copy has landed (on the CPU the copy is immediate)."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._host = torch.zeros((), pin_memory=cuda)
        self._event = torch.cuda.Event() if cuda else None
        self._count: int | None = None

    def send(self, value: Tensor, count: int) -> None:
        self._host.copy_(value.detach(), non_blocking=True)
        if self._event is not None:
            self._event.record()
        self._count = count

    def read(self) -> tuple[float, int] | None:
        """``(value, count)`` of the last send, or ``None`` if nothing has arrived yet."""
        if self._count is None or (self._event is not None and not self._event.query()):
            return None
        return float(self._host), self._count


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.dataset``; returns the results (also written to ``<out>/results.json``).

    Runs distributed when launched by ``torchrun``. With ``stop_after`` the run stops after that many epochs in
    total (after writing a checkpoint) and returns the metrics so far without the final evaluation.
    """
    env = D.setup(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        D.cleanup(env)


def _train(cfg: TrainConfig, env: D.DistEnv) -> dict[str, Any]:
    device, out = env.device, Path(cfg.out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if cfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        saved = ckpt["config"]
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # for settings added since
        changed = {k: (saved.get(k, defaults[k]), v) for k, v in dataclasses.asdict(cfg).items()
                   if k not in _RESUMABLE and saved.get(k, defaults[k]) != v}
        if changed:
            raise ValueError(f"resume: the checkpoint in {ckpt_path} was made with different settings "
                             f"(name: (checkpoint, now)): {changed}.")
    torch.manual_seed(cfg.seed)  # the same initial weights on every process

    train_x, train_y = load_split(cfg, train=True)
    test_x, test_y = load_split(cfg, train=False)
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    n = train_x.shape[0]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size: {cfg.batch_size} is larger than the training set ({n} images).")

    model = build_method(cfg.method, cfg.arch, hidden_dim=cfg.proj_hidden, proj_dim=cfg.proj_dim,
                         temperature=cfg.temperature, momentum=cfg.byol_momentum)
    if cfg.idaa and cfg.dual_bn:
        convert_to_dual_bn(model)
    model.to(device)
    torch.manual_seed(cfg.seed * 1000 + env.rank)  # then a random stream (views) per process
    idaa: IDAATransform | PixelFGSM | None = None
    if cfg.idaa and cfg.adversary == "pixel_fgsm":
        # BYOL has no ``encoder``: its adversarial_view passes its own loss_fn, so the module is never called.
        idaa = PixelFGSM(encoder=getattr(model, "encoder", model), eps=cfg.pixel_eps, temperature=cfg.temperature,
                         use_adversarial_bn=cfg.dual_bn)
    elif cfg.idaa:
        idaa = IDAATransform.from_pretrained(cfg.vae, encoder=getattr(model, "encoder", None), eps=cfg.eps,
                                             steps=cfg.attack_steps, temperature=cfg.temperature,
                                             use_adversarial_bn=cfg.dual_bn, map_location=device)
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch))
    views = simclr_views(cfg.image_size)

    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, metrics = ckpt["epoch"], ckpt["metrics"]
        if ckpt["world_size"] == env.world_size:
            set_rng_state(ckpt["rng"][env.rank], device)
        elif env.is_main:
            print(f"resume: the checkpoint was written by {ckpt['world_size']} processes, this run has "
                  f"{env.world_size}; random streams restart.", file=sys.stderr)
    elif cfg.resume and env.is_main:
        print(f"resume: no {ckpt_path} yet; starting from scratch.", file=sys.stderr)

    grid_x = _to_float(test_x[torch.linspace(0, test_x.shape[0] - 1, 8).long().to(device)])
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)

    for epoch in range(start_epoch, last_epoch):
        model.train()
        batches = D.shard_indices(n, cfg.batch_size, cfg.seed, epoch, env.rank, env.world_size)
        sums = torch.zeros(3, device=device)
        running_loss = _DelayedScalar(device)
        bar = tqdm(total=steps_per_epoch * cfg.batch_size, unit="img", unit_scale=True, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=cfg.no_progress or not env.is_main)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        for step, index in enumerate(batches):
            x = _to_float(train_x[index.to(device, non_blocking=True)])
            with torch.no_grad():
                v1, v2 = views(x), views(x)
            with amp:
                out1, out2 = net(v1), net(v2)
                loss_clean = model.pair_loss(out1, out2)
                loss_adv = torch.zeros((), device=device)
                if idaa is not None:
                    x_adv = model.adversarial_view(idaa, v1, out1)
                    with adversarial_bn(cfg.dual_bn):
                        out_adv = net(x_adv)
                    loss_adv = model.pair_loss(out1, out_adv)
                loss = loss_clean + cfg.alpha * loss_adv
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            model.after_step((epoch * steps_per_epoch + step + 1) / (cfg.epochs * steps_per_epoch))
            sums += torch.stack([loss.detach(), loss_clean.detach(), loss_adv.detach()]).float()
            bar.update(cfg.batch_size)
            if step % 10 == 9 and not bar.disable:
                shown = running_loss.read()  # the value sent 10 steps ago: no wait on the device
                if shown is not None:
                    bar.set_postfix(loss=f"{shown[0] / shown[1]:.4f}", refresh=False)
                running_loss.send(sums[0], step + 1)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - tic
        loss, loss_clean, loss_adv = (D.all_reduce_mean(sums) / steps_per_epoch).tolist()  # one sync per epoch
        row: dict[str, Any] = {
            "epoch": epoch + 1, "loss": loss, "loss_clean": loss_clean, "loss_adv": loss_adv if cfg.idaa else None,
            "knn_acc": None, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
            "images_per_s": round(steps_per_epoch * cfg.batch_size / seconds, 1),
        }
        if env.is_main and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            row["knn_acc"] = _knn(cfg, model.backbone, train_x, train_y, test_x, test_y)
        metrics.append(row)
        if env.is_main:
            _write_jsonl(out / METRICS, metrics)
            if idaa is not None:
                write_grid(idaa, model, grid_x, out / GRID)
            if not cfg.no_progress:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                tqdm.write(json.dumps(shown))
        if (epoch + 1) % cfg.save_every == 0 or epoch + 1 in (cfg.epochs, last_epoch):
            _save(cfg, env, ckpt_path, model, optimizer, scheduler, epoch + 1, metrics)

    if last_epoch < cfg.epochs:
        return {"stopped_after": last_epoch, "metrics": metrics}
    results: dict[str, Any] = {}
    if env.is_main:
        train_f = extract_features(model.backbone, train_x)
        test_f = extract_features(model.backbone, test_x)
        this_run = [m["images_per_s"] for m in metrics[start_epoch:]] or [m["images_per_s"] for m in metrics]
        results = {
            "knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn_k, cfg.knn_temperature),
            "linear_acc": linear_probe(train_f, train_y, test_f, test_y, steps=cfg.probe_steps),
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "images_per_s": round(sum(this_run) / len(this_run), 1) if this_run else None,
            "epochs": cfg.epochs,
            "world_size": env.world_size,
            "device": str(device),
            "args": dataclasses.asdict(cfg),
        }
        (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
        if not cfg.no_progress:
            print(f"kNN accuracy {results['knn_acc']:.4f}, linear accuracy {results['linear_acc']:.4f}, "
                  f"{results['images_per_s']} images/s; outputs in {out}/")
    if env.distributed:
        dist.barrier()
    return results


def _knn(cfg: TrainConfig, backbone: nn.Module, train_x: Tensor, train_y: Tensor, test_x: Tensor,
         test_y: Tensor) -> float:
    train_f, test_f = extract_features(backbone, train_x), extract_features(backbone, test_x)
    return knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn_k, cfg.knn_temperature)


def _save(cfg: TrainConfig, env: D.DistEnv, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, metrics: list[dict[str, Any]]) -> None:
    rng = [rng_state(env.device)]
    if env.distributed:
        rng = [None] * env.world_size
        dist.all_gather_object(rng, {k: v.cpu() for k, v in rng_state(env.device).items()})
    if env.is_main:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng, "metrics": metrics,
                 "config": dataclasses.asdict(cfg), "world_size": env.world_size}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    if env.distributed:
        dist.barrier()
