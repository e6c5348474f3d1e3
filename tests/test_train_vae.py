"""The VAE trainer: a tiny offline run writes a loadable Hub-layout checkpoint, resumes exactly, and reports honestly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from idaa_transforms import IdentityVAE
from idaa_transforms.train_vae import baseline_metrics, main, reconstruction_metrics

TINY = ["--dataset", "photos", "--width", "16", "--latent-dim", "8", "--crops-per-photo", "16", "--held-out-crops", "8", "--batch-size", "32",
        "--device", "cpu", "--no-progress", "--seed", "1"]


def test_tiny_run_writes_a_hub_checkpoint(tmp_path):
    out = main([*TINY, "--epochs", "2", "--out", str(tmp_path / "vae")])
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "reconstructions.png", "metrics.jsonl"} <= names
    vae = IdentityVAE.from_pretrained(out)
    assert vae.config.latent_dim == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    card = (out / "README.md").read_text()
    assert "idaa-train-vae --dataset photos" in card  # the command that made it
    assert f"{records[-1]['held_out_psnr']:.2f}" in card  # the figure it reports is the one it measured
    assert "downsample_4x_bilinear" in card and "chelsea" in card  # baselines and the held-out photographs
    assert Image.open(out / "reconstructions.png").size[0] > 0


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from idaa_transforms import train_vae as tv

    main([*TINY, "--epochs", "2", "--out", str(tmp_path / "straight")])

    class Interrupted(Exception):
        pass

    calls = []

    def metrics_then_interrupt(*args, **kwargs):  # epoch 1 finishes and is saved; epoch 2 is cut off
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return reconstruction_metrics(*args, **kwargs)

    args = [*TINY, "--epochs", "2", "--save-every", "1", "--out", str(tmp_path / "resumed")]
    monkeypatch.setattr(tv, "reconstruction_metrics", metrics_then_interrupt)
    with pytest.raises(Interrupted):
        main(args)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "trainer_state.pt", weights_only=True)["epoch"] == 1
    main([*args, "--resume"])

    straight = IdentityVAE.from_pretrained(tmp_path / "straight").state_dict()
    resumed = IdentityVAE.from_pretrained(tmp_path / "resumed").state_dict()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("straight", "resumed")]
    assert losses[0] == losses[1]


def test_metrics_hold_each_epoch_once(tmp_path):
    out = tmp_path / "vae"
    main([*TINY, "--epochs", "1", "--out", str(out)])
    main([*TINY, "--epochs", "1", "--out", str(out)])  # a fresh run into the same folder starts a new file
    epochs = lambda: [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert epochs() == [1]
    # A run that logged epoch 2 but died before saving it: the resumed run logs epoch 2 again, once.
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 0.0}) + "\n")
    main([*TINY, "--epochs", "2", "--out", str(out), "--resume"])
    assert epochs() == [1, 2]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[1])["loss"] != 0.0


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.pt does not exist"):
        main([*TINY, "--epochs", "1", "--out", str(tmp_path), "--resume"])


def test_imagefolder_dataset(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                colour = (200, 30, 30) if label == "a" else (30, 30, 200)
                Image.new("RGB", (40, 48), colour).save(folder / f"{i}.png")
    out = main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"), "--width", "16",
                "--latent-dim", "8", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--no-progress",
                "--workers", "0", "--out", str(tmp_path / "vae")])
    assert "imagefolder training split (8 images)" in (out / "README.md").read_text()


def test_reconstruction_metrics_of_a_perfect_and_a_flat_model():
    images = torch.rand(4, 3, 32, 32)
    scores = baseline_metrics(images)
    assert set(scores) >= {"per_image_mean_colour", "downsample_4x_bilinear", "gaussian_blur_sigma1.0"}
    # Removing more detail can only lower PSNR on white noise.
    assert scores["downsample_2x_bilinear"] > scores["downsample_4x_bilinear"] > scores["downsample_8x_bilinear"]
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert baseline_metrics(flat)["per_image_mean_colour"] > 100  # exact up to float rounding
    noise_mse = ((images - images.mean(dim=(2, 3), keepdim=True)) ** 2).mean().item()
    assert math.isclose(scores["per_image_mean_colour"], 10 * math.log10(1 / noise_mse), rel_tol=1e-4)


def test_non_positive_sizes_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main([*TINY, "--epochs", "0", "--out", "unused"])
    assert "--epochs: expected a positive integer, got 0" in capsys.readouterr().err


def test_resume_with_another_architecture_is_a_clear_error(tmp_path):
    main([*TINY, "--epochs", "1", "--out", str(tmp_path)])
    wider = list(TINY)
    wider[wider.index("--width") + 1] = "32"
    with pytest.raises(ValueError, match=r"holds a VAE with other settings.*'width': \(16, 32\)"):
        main([*wider, "--epochs", "2", "--out", str(tmp_path), "--resume"])
