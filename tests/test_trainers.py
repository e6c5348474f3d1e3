"""The trainers: models, methods, configuration, command line, data loading and tiny end-to-end runs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from idaa_transforms import DualBatchNorm, IDAATransform
from idaa_transforms.data import load_images
from idaa_transforms.trainers import TrainConfig, build_encoder, build_method, cifar_resnet18, parse_args, train
from idaa_transforms.trainers.cli import build_parser
from idaa_transforms.trainers.engine import load_split
from idaa_transforms.trainers.methods import BYOL
from idaa_transforms.attack import call_without_buffer_updates

from conftest import make_vae

TINY = dict(dataset="photos", arch="small_cnn", crops_per_photo=16, batch_size=32, epochs=1, probe_steps=20,
            knn_k=20, device="cpu", no_progress=True)


# -- models and methods ----------------------------------------------------------------------------------------
def test_cifar_resnet18_stem():
    net = cifar_resnet18()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 512)


def test_build_encoder_rejects_unknown_arch():
    backbone, dim = build_encoder("small_cnn")
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    with pytest.raises(ValueError, match="arch: expected one of"):
        build_encoder("vit")


def test_call_without_buffer_updates_keeps_batchnorm_statistics():
    method = build_method("simclr", "small_cnn").train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    call_without_buffer_updates(method, torch.rand(4, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    method(torch.rand(4, 3, 32, 32))  # a plain call does update them
    assert not all(torch.equal(before[k], v) for k, v in method.state_dict().items())


def test_byol_target_follows_online_by_ema():
    torch.manual_seed(0)
    byol = build_method("byol", "small_cnn", momentum=0.9)
    assert isinstance(byol, BYOL)
    assert not any(p.requires_grad for p in byol.target.parameters())
    with torch.no_grad():
        for p in byol.online.parameters():
            p.add_(1.0)
    target_before = [p.clone() for p in byol.target.parameters()]
    byol.after_step(0.0)  # momentum 0.9 at the start: target += 0.1 * (online - target)
    for t0, t, o in zip(target_before, byol.target.parameters(), byol.online.parameters()):
        torch.testing.assert_close(t, t0 + 0.1 * (o - t0))
    byol.after_step(1.0)  # momentum 1 at the end: no change
    assert all(torch.equal(a, b) for a, b in zip(list(byol.target.parameters()), [p.clone() for p in byol.target.parameters()]))


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_adversarial_view_increases_the_methods_loss(name):
    torch.manual_seed(0)
    method = build_method(name, "small_cnn").train()
    idaa = IDAATransform(make_vae(), encoder=getattr(method, "encoder", None), eps=0.5)
    x = torch.rand(8, 3, 32, 32)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    with torch.no_grad():
        out = call_without_buffer_updates(method, x)
        clean = call_without_buffer_updates(method, x)
    x_adv = method.adversarial_view(idaa, x, out)
    assert x_adv.shape == x.shape and not x_adv.requires_grad and not torch.equal(x_adv, x)
    assert all(torch.equal(state[k], v) for k, v in method.state_dict().items())  # no BN statistics moved
    with torch.no_grad():
        adv = call_without_buffer_updates(method, x_adv)
        # A random perturbation of the same size in latent space is the control.
        parts = idaa.decompose(x)
        z = parts.latent + 0.5 * torch.randn(parts.latent.shape).sign()
        x_rand = idaa._decode(z, x) + parts.residual
        rand = call_without_buffer_updates(method, x_rand)
    assert method.pair_loss(out, adv) > method.pair_loss(out, rand)
    assert method.pair_loss(out, adv) > method.pair_loss(out, clean)


# -- configuration and command line ------------------------------------------------------------------------------
def test_cli_defaults_are_the_papers():
    cfg = parse_args([])
    assert (cfg.dataset, cfg.arch, cfg.method, cfg.idaa, cfg.dual_bn) == ("cifar10", "resnet18", "simclr", True, True)
    assert (cfg.eps, cfg.alpha, cfg.temperature, cfg.lr, cfg.weight_decay) == (0.1, 1.0, 0.5, 3e-4, 1e-6)
    assert (cfg.proj_dim, cfg.proj_hidden, cfg.optimizer, cfg.vae) == (64, 512, "adam", None)
    assert cfg.out == "runs/simclr-idaa"
    base = parse_args(["--no-idaa", "--method", "byol", "--dataset", "photos", "--no-dual-bn"])
    assert (base.idaa, base.method, base.dataset, base.dual_bn, base.out) == (False, "byol", "photos", False, "runs/byol")


def test_cli_help_and_errors(capsys):
    help_text = build_parser().format_help()
    for option in ("--dataset", "--data-dir", "--epochs", "--batch-size", "--arch", "--vae", "--eps", "--alpha",
                   "--no-idaa", "--amp", "--device", "--seed", "--out", "--resume", "--method", "--save-every",
                   "--workers", "--no-progress", "photos", "small_cnn"):
        assert option in help_text
    with pytest.raises(SystemExit):
        parse_args(["--epochs", "0"])
    assert "epochs: expected a positive int" in capsys.readouterr().err


def test_help_shows_each_default_once():
    import re

    from idaa_transforms.experiments.compare import build_parser as compare_parser
    from idaa_transforms.train_vae import build_parser as vae_parser

    def flat(parser):
        return re.sub(r"\s+", " ", parser.format_help())

    trainer, compare, vae = flat(build_parser()), flat(compare_parser()), flat(vae_parser())
    assert "--epochs EPOCHS default: 200" in trainer and "--lr LR default: 0.0003" in trainer
    assert "--epochs EPOCHS default: 10" in compare and "--seeds SEEDS [SEEDS ...] default: [0, 1, 2, 3, 4]" in compare
    assert "--epochs EPOCHS default: 300" in vae
    for text in (trainer, compare, vae):
        assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
        assert not re.search(r"default: [^()]*\) \(default:", text)


@pytest.mark.parametrize("bad, match", [(dict(method="moco"), "method: expected one of"),
                                        (dict(batch_size=0), "batch_size: expected a positive int"),
                                        (dict(eps=-1.0), "eps: expected a number >= 0"),
                                        (dict(lr=0.0), "lr: expected a number > 0")])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


# -- data -------------------------------------------------------------------------------------------------------
def test_make_dataset_reads_a_local_cifar10(tmp_path, monkeypatch):
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i, i + 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(c) for c in range(10)]}))
    # The md5 sums of the fake files cannot match torchvision's: skip the integrity checks.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    images, labels = load_images("cifar10", tmp_path, train=True)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and labels[0] == 0
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    images, labels = load_split(cfg, train=False)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32) and labels.tolist() == [5, 6, 2, 3]
    expected = np.frombuffer(pickle.loads((folder / "test_batch").read_bytes())["data"][0], np.uint8)
    assert np.array_equal(images[0].numpy().reshape(-1), expected)


def test_make_dataset_reads_an_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 48), colour).save(tmp_path / split / cls / f"{i}.png")
    images, labels = load_split(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), workers=0), train=True)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.dtype == torch.uint8 and bool((images[0, 0] == 255).all()) and bool((images[-1, 2] == 255).all())


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> str:
    """A tiny VAE checkpoint folder: the runs below test the plumbing, not the shipped VAE's quality."""
    folder = tmp_path_factory.mktemp("vae")
    make_vae().save_pretrained(folder)
    return str(folder)


# -- end to end -------------------------------------------------------------------------------------------------
def test_simclr_idaa_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    results = train(TrainConfig(**TINY, out=str(out), alpha=0.5))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    keys = {"epoch", "loss", "loss_clean", "loss_adv", "knn_acc", "lr", "seconds", "images_per_s"}
    assert keys <= set(rows[0])
    assert rows[0]["loss"] == pytest.approx(rows[0]["loss_clean"] + 0.5 * rows[0]["loss_adv"], rel=1e-5)
    assert 0 <= rows[0]["knn_acc"] <= 1 and rows[0]["images_per_s"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["knn_acc"] == results["knn_acc"] and 0 <= saved["linear_acc"] <= 1
    assert saved["args"]["alpha"] == 0.5 and saved["images_per_s"] > 0
    from PIL import Image

    grid = Image.open(out / "idaa_grid.png")
    assert grid.size == (8 * 98 + 2, 5 * 98 + 2)  # 8 images x 5 rows (x, G, R, x_adv, |x_adv - x|), 32 px shown at 96
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["metrics"] == rows
    assert any("adversarial" in k for k in ckpt["model"])  # separate adversarial BatchNorms
    adv_counts = [v for k, v in ckpt["model"].items() if k.endswith("adversarial.num_batches_tracked")]
    assert adv_counts and all(int(c) == 2 for c in adv_counts)  # 2 steps, adversarial forwards only


def test_baseline_has_no_idaa(tmp_path):
    out = tmp_path / "base"
    train(TrainConfig(**{**TINY, "idaa": False}, out=str(out)))
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["loss_adv"] is None and row["loss"] == pytest.approx(row["loss_clean"])
    assert not (out / "idaa_grid.png").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not any("adversarial" in k for k in ckpt["model"])


def test_byol_idaa_run(tmp_path, tiny_vae):
    results = train(TrainConfig(**{**TINY, "method": "byol"}, vae=tiny_vae, out=str(tmp_path)))
    assert 0 <= results["linear_acc"] <= 1
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert -4 <= row["loss_clean"] <= 4 and row["loss_adv"] is not None


def test_resume_continues_exactly(tmp_path, tiny_vae):
    cfg = dict(TINY, epochs=2, save_every=1, knn_k=10, vae=tiny_vae)
    full = train(TrainConfig(**cfg, out=str(tmp_path / "full")))
    first = train(TrainConfig(**cfg, out=str(tmp_path / "split"), stop_after=1))
    assert first["stopped_after"] == 1 and not (tmp_path / "split" / "results.json").exists()
    resumed = train(TrainConfig(**cfg, out=str(tmp_path / "split"), resume=True))
    assert (resumed["knn_acc"], resumed["linear_acc"]) == (full["knn_acc"], full["linear_acc"])

    def stable(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
                for line in path.read_text().splitlines()]

    assert stable(tmp_path / "split" / "metrics.jsonl") == stable(tmp_path / "full" / "metrics.jsonl")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * (80 // 32)
    # Resuming with different settings is refused.
    with pytest.raises(ValueError, match="different settings"):
        train(TrainConfig(**{**cfg, "eps": 0.2}, out=str(tmp_path / "split"), resume=True))


def test_delayed_scalar_reads_what_was_sent():
    from idaa_transforms.trainers.engine import _DelayedScalar

    reader = _DelayedScalar(torch.device("cpu"))
    assert reader.read() is None  # nothing sent yet
    reader.send(torch.tensor(6.0), 3)
    assert reader.read() == (6.0, 3)
