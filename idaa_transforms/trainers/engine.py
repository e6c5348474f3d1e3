"""The training loop shared by every method: data, optimisation, the adversarial view, evaluation, checkpoints.

One training step on a batch ``x`` (on the device):

1. two views ``v1, v2`` of the uint8 batch ``x`` (:func:`two_views` with :func:`~idaa_transforms.views.simclr_views`);
2. ``L(v1, v2)``, the method's loss over the global batch;
3. with IDAA, the adversarial view ``x_adv`` of ``v1`` from :class:`~idaa_transforms.IDAATransform`, attacking the
   method's own loss with the outputs of ``v1`` already computed, and ``L(v1, x_adv)`` with the ``x_adv`` forward
   inside :func:`~idaa_transforms.adversarial_bn` (separate adversarial BatchNorms unless disabled); with
   ``adversary="pixel_fgsm"`` the view comes from :class:`~idaa_transforms.pixel_fgsm.PixelFGSM` instead
   (one signed-gradient step of size ``pixel_eps`` on the pixels), everything else unchanged;
4. one optimiser step on ``L(v1, v2) + alpha * L(v1, x_adv)``.

Steps 2-4 are :func:`train_step`, the one definition of the step that the benchmarks time and the synchronisation
check runs.

A run is four jobs, one function each: prepare the output folder and read the checkpoint to resume from
(:func:`_start`), build the model, adversary and optimiser (:func:`_build`), train epoch by epoch
(:func:`_train_epoch`), and evaluate the final features (:func:`_finish`).

Outputs in ``config.out`` (written by rank 0, each atomically): ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (every ``save_every`` epochs; ``resume=True`` continues from it exactly), ``idaa_grid.png`` and
``results.json``. :func:`read_run` reads a finished run back as a :class:`TrainResult`.

Example:
    >>> cfg = TrainConfig(dataset="photos", arch="small_cnn", epochs=1)  # doctest: +SKIP
    >>> train(cfg).knn_acc  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from idaa_transforms import _cli, _files
from idaa_transforms._grids import decomposition_rows, save_image_rows
from idaa_transforms._rng import rng_state, set_rng_state
from idaa_transforms.attack import Adversary, call_without_buffer_updates
from idaa_transforms.bn import adversarial_bn, convert_to_dual_bn
from idaa_transforms.data import class_balanced_subset, load_images, memory_format_for, to_float_images
from idaa_transforms.pixel_fgsm import PixelFGSM
from idaa_transforms.trainers import distributed as D
from idaa_transforms.views import simclr_views
from idaa_transforms.trainers.config import TrainConfig, changed_settings
from idaa_transforms.trainers.evaluation import extract_features, knn_accuracy, linear_probe
from idaa_transforms.trainers.methods import BYOL, SimCLR, build_method
from idaa_transforms.transform import IDAATransform

__all__ = ["TrainConfig", "EpochMetrics", "TrainResult", "train", "read_run", "load_split", "build_model",
           "build_adversary", "two_views", "train_step", "write_grid", "CHECKPOINT", "METRICS", "RESULTS", "GRID", "RUN_FILES"]

CHECKPOINT, METRICS, RESULTS, GRID = "checkpoint.pt", "metrics.jsonl", "results.json", "idaa_grid.png"
#: The files a run writes: any of them in ``--out`` means a run is already there.
RUN_FILES = (CHECKPOINT, METRICS, RESULTS, GRID)
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "metrics", "config", "world_size")

Method = SimCLR | BYOL


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``: mean losses over the epoch's steps, the kNN monitor (``None`` when not run
    that epoch) and the epoch's training time."""

    epoch: int
    loss: float
    loss_clean: float
    loss_adv: float | None
    knn_acc: float | None
    lr: float
    seconds: float
    images_per_s: float


@dataclass
class TrainResult:
    """What a run produced: final accuracies (in [0, 1]; ``None`` for a run stopped early), throughput, settings.

    ``stopped_after`` is the number of epochs done when ``stop_after`` or a time limit ended the run before ``epochs``; such a run
    has no final evaluation and continues with ``resume=True``.
    """

    knn_acc: float | None
    linear_acc: float | None
    final_loss: float | None
    images_per_s: float | None
    epochs: int
    world_size: int
    device: str
    config: dict[str, Any]
    metrics: list[EpochMetrics] = field(default_factory=list)
    stopped_after: int | None = None

    @property
    def finished(self) -> bool:
        return self.stopped_after is None

    def summary(self) -> str:
        """The one line printed at the end of a run."""
        if not self.finished:
            return f"stopped after epoch {self.stopped_after} of {self.epochs}; continue with --resume"
        return (f"kNN accuracy {self.knn_acc:.4f}, linear accuracy {self.linear_acc:.4f}, {self.images_per_s} "
                f"images/s")


def read_run(folder: str | Path) -> TrainResult:
    """A finished run read back from its folder (``results.json`` and ``metrics.jsonl``).

    Raises:
        FileNotFoundError: the folder holds no finished run.
        ValueError: its ``results.json`` is damaged.
    """
    folder = Path(folder)
    if not (folder / RESULTS).is_file():
        raise FileNotFoundError(f"{folder} holds no finished run ({RESULTS} is missing).")
    saved = _files.read_json(folder / RESULTS, advice="delete it, and the same command with --resume evaluates the "
                                                      "run again from its checkpoint (or trains it again without one)")
    metrics = [EpochMetrics(**row) for row in _files.read_jsonl(folder / METRICS)]
    return TrainResult(**{k: saved[k] for k in ("knn_acc", "linear_acc", "final_loss", "images_per_s", "epochs",
                                                "world_size", "device", "config")}, metrics=metrics)


def load_split(cfg: TrainConfig, train: bool) -> tuple[Tensor, Tensor]:
    """A split of ``cfg.dataset`` as in-memory uint8 ``(images, labels)`` on the CPU
    (see :func:`~idaa_transforms.data.load_images`).

    With ``cfg.subset`` the training split is a class-balanced subset of that many images and the test split one of
    at most that many; both are drawn with a fixed seed, so every seed of a comparison sees the same images.
    """
    if not train and cfg.subset is not None:
        images, labels = load_split(dataclasses.replace(cfg, subset=None), train=False)
        if labels.numel() > cfg.subset:
            index = class_balanced_subset(labels, cfg.subset, seed=0)
            images, labels = images[index], labels[index]
        return images, labels
    return load_images(cfg.dataset, cfg.data_dir, train=train, download=cfg.download, image_size=cfg.image_size,
                       subset=cfg.subset, seed=0, crops_per_photo=cfg.crops_per_photo)


def build_model(cfg: TrainConfig) -> Method:
    """A fresh ``cfg.method`` on a fresh ``cfg.arch``, with adversarial BatchNorms when the run uses them."""
    model = build_method(cfg.method, cfg.arch, hidden_dim=cfg.proj_hidden, proj_dim=cfg.proj_dim,
                         temperature=cfg.temperature, momentum=cfg.byol_momentum)
    if cfg.idaa and cfg.dual_bn:
        convert_to_dual_bn(model)
    return model


def build_adversary(cfg: TrainConfig, model: Method, device: torch.device, *, eps: float | None = None,
                    pixel_eps: float | None = None) -> Adversary | None:
    """The run's adversary on ``model`` (``None`` for the baseline); ``eps``/``pixel_eps`` override the config's."""
    if not cfg.idaa:
        return None
    if cfg.adversary == "pixel_fgsm":
        # BYOL has no ``encoder``: its adversarial_view passes its own loss_fn, so the module is never called.
        step = cfg.pixel_eps if pixel_eps is None else pixel_eps
        return PixelFGSM(encoder=getattr(model, "encoder", model), eps=step,
                         temperature=cfg.temperature, use_adversarial_bn=cfg.dual_bn)
    return IDAATransform.from_pretrained(cfg.vae, encoder=getattr(model, "encoder", None),
                                         eps=cfg.eps if eps is None else eps, steps=cfg.attack_steps,
                                         temperature=cfg.temperature, use_adversarial_bn=cfg.dual_bn,
                                         map_location=device)


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


def write_grid(adversary: Adversary, model: Method, x: Tensor, path: str | Path) -> None:
    """PNG rows: ``x``, ``G(x)``, ``R(x)`` (x4 around grey), ``x_adv`` and ``|x_adv - x|`` scaled to its maximum.

    ``model`` (a method in train mode) is attacked as in training; its BatchNorm statistics are left untouched.
    A :class:`PixelFGSM` has no decomposition: its grid has the rows ``x``, ``x_adv`` and ``|x_adv - x|``.
    """
    reconstruction = residual = None
    with torch.no_grad():
        if isinstance(adversary, IDAATransform):
            reconstruction, residual, _ = adversary.decompose(x)
        out = call_without_buffer_updates(model, x)
    x_adv = model.adversarial_view(adversary, x, out)
    save_image_rows(decomposition_rows(x, reconstruction, residual, x_adv=x_adv), path)


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


class _Data(NamedTuple):
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass
class _Parts:
    """What :func:`_build` makes: the model (and its DDP wrapper), the adversary, the optimiser and schedule."""

    model: Method
    net: nn.Module
    adversary: Adversary | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    views: nn.Module
    steps_per_epoch: int
    memory_format: torch.memory_format = torch.contiguous_format
    #: Train and test features after the last epoch, extracted once by its kNN monitor for the final evaluation.
    final_features: tuple[Tensor, Tensor] | None = None


def train(cfg: TrainConfig, *, deadline: float | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.dataset``; the results are also written to ``<out>/results.json``.

    Runs distributed when launched by ``torchrun``. With ``stop_after`` the run stops after that many epochs of
    this call, and with ``max_minutes`` between epochs when the next epoch, as long as the longest so far, would end
    past that many minutes of this call. Either way it writes a checkpoint and returns the metrics so far without the
    final evaluation; ``resume=True`` continues it.

    Args:
        cfg: the run's settings.
        deadline: a ``time.time()`` by which to stop, as ``max_minutes`` does (a harness's deadline for all its
            runs); the earlier of the two applies.

    Raises:
        ValueError: ``out`` holds another run (without ``resume``/``overwrite``), is a file or is not writable; the
            checkpoint to resume from is unreadable or was made with settings that change the result; the batch does
            not fit the data or the processes.
    """
    start = time.time()
    env = D.setup(cfg.device)
    try:
        with _files.removed_if_left_empty(cfg.out) if env.is_main else contextlib.nullcontext():  # rank 0 makes it
            return _train(cfg, env, start, deadline)
    finally:
        D.cleanup(env)


def _train(cfg: TrainConfig, env: D.DistEnv, start: float, deadline: float | None) -> TrainResult:
    """:func:`train` in its process group, holding ``cfg.out`` (rank 0) from start to end."""
    with contextlib.ExitStack() as claim:
        return _train_claimed(cfg, env, start, deadline, claim)


def _train_claimed(cfg: TrainConfig, env: D.DistEnv, start: float, deadline: float | None,
                   claim: contextlib.ExitStack) -> TrainResult:
    out, ckpt = _start(cfg, env, claim)
    data = _load_data(cfg, env)
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    parts = _build(cfg, env, data.train_x.shape[0])
    start_epoch, metrics = _restore(cfg, env, parts, ckpt)
    if cfg.overwrite and env.is_main:  # only now, so that a run refused at start-up replaces nothing
        _files.remove_previous_run(out, RUN_FILES)
    grid_x = to_float_images(data.test_x[torch.linspace(0, data.test_x.shape[0] - 1, 8).long().to(env.device)])
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    limits = [t for t in (deadline, _cli.deadline_after(cfg.max_minutes, start)) if t is not None]
    deadline = min(limits, default=None)
    longest = 0.0
    for epoch in range(start_epoch, last_epoch):
        tic = time.time()
        metrics.append(_train_epoch(cfg, env, parts, data, epoch))
        if env.is_main:
            _files.atomic_write_jsonl(out / METRICS, map(dataclasses.asdict, metrics))
            if parts.adversary is not None:
                write_grid(parts.adversary, parts.model, grid_x, out / GRID)
            if not cfg.no_progress:
                shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v)  # 4 digits: lr 3e-05, not 0.0
                         for k, v in dataclasses.asdict(metrics[-1]).items()}
                tqdm.write(json.dumps(shown))
        longest = max(longest, time.time() - tic)
        if epoch + 1 < last_epoch and _stop_before_next_epoch(env, deadline, longest):
            last_epoch = epoch + 1
        if (epoch + 1) % cfg.save_every == 0 or epoch + 1 in (cfg.epochs, last_epoch):
            _save(cfg, env, out / CHECKPOINT, parts, epoch + 1, metrics)
        if epoch + 1 == last_epoch:
            break
    result = _finish(cfg, env, parts, data, metrics, last_epoch)
    if env.is_main:
        if result.finished:
            _files.atomic_write_json(out / RESULTS, {k: v for k, v in dataclasses.asdict(result).items()
                                                     if k not in ("metrics", "stopped_after")})
        print(f"{result.summary()}; outputs in {out}/", flush=True)
    if env.distributed:
        dist.barrier()
    return result


def _stop_before_next_epoch(env: D.DistEnv, deadline: float | None, epoch_seconds: float) -> bool:
    """Whether the next epoch, as long as ``epoch_seconds``, would end past ``deadline``, as rank 0 sees it (every
    process takes the same decision)."""
    if deadline is None:
        return False
    decision = torch.tensor([float(_cli.next_epoch_would_overrun(deadline, epoch_seconds))], device=env.device)
    if env.distributed:
        dist.broadcast(decision, src=0)
    return bool(decision.item())


def _on_main(env: D.DistEnv, job):
    """Run ``job()`` on rank 0 and share its result, or its ``ValueError``, with every process."""
    outcome: list[Any] = [None]
    if env.is_main:
        try:
            outcome = [("ok", job())]
        except ValueError as err:
            outcome = [("error", str(err))]
    if env.distributed:
        dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise ValueError(value)
    return value


def _start(cfg: TrainConfig, env: D.DistEnv, claim: contextlib.ExitStack) -> tuple[Path, dict[str, Any] | None]:
    """Claim ``cfg.out`` into ``claim`` (refusing a folder another run holds, or one it would start afresh over) and
    read the checkpoint to resume from."""
    out = Path(cfg.out)

    def prepare() -> None:
        claim.enter_context(_files.claim_folder(out))
        _files.prepare_run_dir(out, kind=_files.SSL_RUN, resume=cfg.resume, overwrite=cfg.overwrite,
                               markers=RUN_FILES, checkpoint=CHECKPOINT)

    _on_main(env, prepare)
    path = out / CHECKPOINT
    if not cfg.resume:
        return out, None
    if not path.is_file():
        if env.is_main:
            print(f"resume: no {path} yet; starting from scratch.", file=sys.stderr)
        return out, None
    ckpt = _files.load_torch_state(path, map_location=env.device, required=_CHECKPOINT_KEYS,
                                   kind="checkpoint of these trainers")
    changed = changed_settings(ckpt["config"], cfg)
    if changed:
        raise ValueError(f"resume: the checkpoint in {path} was made with other settings "
                         f"({_files.describe_changes(changed, saved='in the checkpoint')}); resume with the same "
                         f"settings, or start a new run in another --out.")
    return out, ckpt


def _load_data(cfg: TrainConfig, env: D.DistEnv) -> _Data:
    train_x, train_y = load_split(cfg, train=True)
    test_x, test_y = load_split(cfg, train=False)
    return _Data(*(t.to(env.device) for t in (train_x, train_y, test_x, test_y)))


def _build(cfg: TrainConfig, env: D.DistEnv, n: int) -> _Parts:
    """The model (on the device, wrapped for DDP when distributed), its adversary, optimiser and LR schedule."""
    per_process = cfg.batch_size // env.world_size
    if cfg.batch_size % env.world_size or per_process < 2:
        raise ValueError(f"batch_size: {cfg.batch_size} over {env.world_size} processes: expected a multiple of the "
                         f"number of processes with at least 2 images per process (BatchNorm needs two).")
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size: {cfg.batch_size} is larger than the training set ({n} images); "
                         f"use a smaller --batch-size.")
    memory_format = memory_format_for(env.device)
    model = build_model(cfg).to(env.device, memory_format=memory_format)
    torch.manual_seed(cfg.seed * 1000 + env.rank)  # then a random stream (views) per process
    adversary = build_adversary(cfg, model, env.device)
    if isinstance(adversary, nn.Module):
        adversary.to(memory_format=memory_format)  # the VAE's convolutions, as the encoder's
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch))
    return _Parts(model, net, adversary, optimizer, scheduler, simclr_views(cfg.image_size), steps_per_epoch,
                  memory_format)


def _restore(cfg: TrainConfig, env: D.DistEnv, parts: _Parts,
             ckpt: dict[str, Any] | None) -> tuple[int, list[EpochMetrics]]:
    """Load the checkpoint's state into ``parts``; the epoch to start from and the metrics so far."""
    if ckpt is None:
        return 0, []
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["world_size"] == env.world_size:
        set_rng_state(ckpt["rng"][env.rank], env.device)
    elif env.is_main:
        print(f"resume: the checkpoint was written by {ckpt['world_size']} processes, this run has "
              f"{env.world_size}; random streams restart.", file=sys.stderr)
    return ckpt["epoch"], [EpochMetrics(**row) for row in ckpt["metrics"]]


def _train_epoch(cfg: TrainConfig, env: D.DistEnv, parts: _Parts, data: _Data, epoch: int) -> EpochMetrics:
    """One epoch of steps; the kNN monitor on rank 0 when due. One host sync, at the end."""
    model, net, adversary, device = parts.model, parts.net, parts.adversary, env.device
    steps = parts.steps_per_epoch
    amp_dtype = torch.bfloat16 if cfg.amp else None
    model.train()
    batches = D.shard_indices(data.train_x.shape[0], cfg.batch_size, cfg.seed, epoch, env.rank, env.world_size)
    sums = torch.zeros(3, device=device)
    running_loss = _DelayedScalar(device)
    bar = tqdm(total=steps * cfg.batch_size, unit="img", unit_scale=True, leave=False,
               desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=cfg.no_progress or not env.is_main)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for step, index in enumerate(batches):
        v1, v2 = two_views(parts.views, data.train_x[index.to(device, non_blocking=True)], parts.memory_format)
        sums += train_step(model, parts.optimizer, v1, v2, adversary=adversary, alpha=cfg.alpha, dual_bn=cfg.dual_bn,
                           amp=amp_dtype, net=net)
        parts.scheduler.step()
        model.after_step((epoch * steps + step + 1) / (cfg.epochs * steps))
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
    loss_mean, clean_mean, adv_mean = (D.all_reduce_mean(sums) / steps).tolist()  # one sync per epoch
    knn = None
    if env.is_main and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
        train_f, test_f = _features(model.backbone, data)
        knn = knn_accuracy(train_f, data.train_y, test_f, data.test_y, cfg.knn_k, cfg.knn_temperature)
        if epoch + 1 == cfg.epochs:
            parts.final_features = train_f, test_f
    return EpochMetrics(epoch=epoch + 1, loss=loss_mean, loss_clean=clean_mean,
                        loss_adv=adv_mean if adversary is not None else None, knn_acc=knn,
                        lr=parts.optimizer.param_groups[0]["lr"], seconds=round(seconds, 3),
                        images_per_s=round(steps * cfg.batch_size / seconds, 1))


def two_views(views: nn.Module, images: Tensor,
              memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Tensor, Tensor]:
    """The two views of a training step: ``views`` (see :func:`~idaa_transforms.views.simclr_views`) applied twice,
    without gradient, to ``images`` (uint8, as the trainers keep them on the device, or floats in [0, 1]), laid out
    in ``memory_format``."""
    with torch.no_grad():
        return tuple(views(images).contiguous(memory_format=memory_format) for _ in range(2))


def train_step(model: Method, optimizer: torch.optim.Optimizer, v1: Tensor, v2: Tensor, *,
               adversary: Adversary | None = None, alpha: float = 1.0, dual_bn: bool = True,
               amp: torch.dtype | None = None, net: nn.Module | None = None) -> Tensor:
    """One optimisation step of the trainers on two views: ``L(v1, v2)``, with an ``adversary`` the adversarial view
    of ``v1`` and ``alpha * L(v1, x_adv)`` (the ``x_adv`` forward inside :func:`~idaa_transforms.adversarial_bn` when
    ``dual_bn``), backward and ``optimizer.step()``.

    Args:
        model: the method (its ``pair_loss`` and ``adversarial_view``).
        optimizer: the optimiser of ``model``'s parameters.
        v1, v2: the two views (see :func:`two_views`).
        adversary: an :class:`~idaa_transforms.IDAATransform` or :class:`~idaa_transforms.PixelFGSM`; ``None``: the
            baseline.
        alpha: weight of the adversarial term.
        dual_bn: the ``x_adv`` forward uses the adversarial BatchNorms.
        amp: the autocast dtype (``torch.bfloat16``...), or ``None`` for full precision.
        net: what the forwards call (a DDP wrapper of ``model``); ``model`` itself by default.

    Returns:
        ``(loss, loss_clean, loss_adv)`` as one detached float tensor on the views' device (``loss_adv`` is 0 without
        an adversary); nothing is read back to the host.

    Example:
        >>> import torch
        >>> from idaa_transforms.trainers.methods import build_method
        >>> from idaa_transforms.views import simclr_views
        >>> model = build_method("simclr", "small_cnn")
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> train_step(model, optimizer, *two_views(simclr_views(32), images)).shape
        torch.Size([3])
    """
    net = model if net is None else net
    with torch.autocast(v1.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        out1, out2 = net(v1), net(v2)
        loss_clean = model.pair_loss(out1, out2)
        loss_adv = torch.zeros((), device=v1.device)
        if adversary is not None:
            x_adv = model.adversarial_view(adversary, v1, out1)
            with adversarial_bn(dual_bn):
                out_adv = net(x_adv)
            loss_adv = model.pair_loss(out1, out_adv)
        loss = loss_clean + alpha * loss_adv
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss.detach(), loss_clean.detach(), loss_adv.detach()]).float()


def _features(backbone: nn.Module, data: _Data) -> tuple[Tensor, Tensor]:
    return extract_features(backbone, data.train_x), extract_features(backbone, data.test_x)


def _finish(cfg: TrainConfig, env: D.DistEnv, parts: _Parts, data: _Data, metrics: list[EpochMetrics],
            last_epoch: int) -> TrainResult:
    """The final kNN accuracy and linear probe on rank 0 (none for a run stopped before its last epoch), and the
    run's speed: the images of all its epochs, over all their seconds (the calls before a resume too)."""
    seconds = sum(m.seconds for m in metrics)
    speed = round(sum(m.images_per_s * m.seconds for m in metrics) / seconds, 1) if seconds > 0 else None
    result = TrainResult(knn_acc=None, linear_acc=None, final_loss=metrics[-1].loss if metrics else None,
                         images_per_s=speed, epochs=cfg.epochs, world_size=env.world_size, device=str(env.device),
                         config=cfg.to_dict(), metrics=metrics,
                         stopped_after=last_epoch if last_epoch < cfg.epochs else None)
    if result.finished and env.is_main:
        train_f, test_f = parts.final_features or _features(parts.model.backbone, data)
        result.knn_acc = knn_accuracy(train_f, data.train_y, test_f, data.test_y, cfg.knn_k, cfg.knn_temperature)
        result.linear_acc = linear_probe(train_f, data.train_y, test_f, data.test_y, steps=cfg.probe_steps)
    return result


def _save(cfg: TrainConfig, env: D.DistEnv, path: Path, parts: _Parts, epoch: int,
          metrics: list[EpochMetrics]) -> None:
    rng = [rng_state(env.device)]
    if env.distributed:
        rng = [None] * env.world_size
        dist.all_gather_object(rng, {k: v.cpu() for k, v in rng_state(env.device).items()})
    if env.is_main:
        state = {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                 "scheduler": parts.scheduler.state_dict(), "epoch": epoch, "rng": rng,
                 "metrics": [dataclasses.asdict(m) for m in metrics], "config": cfg.to_dict(),
                 "world_size": env.world_size}
        _files.atomic_torch_save(state, path)
    if env.distributed:
        dist.barrier()
