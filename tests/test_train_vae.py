"""The VAE trainer: a tiny offline run writes a loadable Hub-layout checkpoint, resumes exactly, refuses to lose a
finished run, rejects bad settings in one line, and reports honestly."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import idaa_transforms.train_vae as train_vae_module
from idaa_transforms import IdentityVAE, VAEConfig
from idaa_transforms._files import claim_folder
from idaa_transforms.train_vae import (baseline_metrics, build_parser, colour_ratio, main, reconstruction_metrics,
                                       train_vae, vae_training_views)

TINY = ["--dataset", "photos", "--width", "16", "--latent-dim", "8", "--crops-per-photo", "16", "--held-out-crops", "8",
        "--batch-size", "32", "--device", "cpu", "--no-progress", "--seed", "1"]


def run(args: list[str]) -> Path:
    """The trainer as a library call: errors surface as exceptions, not as an exit status."""
    return train_vae(build_parser().parse_args(args), command="test")


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_stopped_early_exits_3_and_its_resume_0(tmp_path):
    out = tmp_path / "vae"
    assert main([*TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out)]) == 3
    assert main([*TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0 and epochs_logged(out) == [1, 2]


def test_tiny_run_writes_a_hub_checkpoint(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "reconstructions.png", "metrics.jsonl",
            "held_out.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    vae = IdentityVAE.from_pretrained(out)
    assert vae.config.latent_dim == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["images_per_s"] > 0 and 0 < r["seconds"] < 60 for r in records)  # per epoch, as the SSL trainer's
    assert all(0 <= r["held_out_colour"] < 2 and r["held_out_psnr"] > 0 for r in records)
    card = (out / "README.md").read_text()
    assert "idaa-train-vae --dataset photos" in card  # the command that made it
    held = json.loads((out / "held_out.json").read_text())
    assert f"{held['images']['psnr']:.2f}" in card and f"{held['simclr_views']['colour_ratio']:.3f}" in card
    assert "downsample_4x_bilinear" in card and "chelsea" in card  # baselines and the held-out photographs
    assert "SimCLR views" in card and "epochs: 2 of 2" in card
    assert Image.open(out / "reconstructions.png").size[0] > 0


def test_console_script_exits_zero(tmp_path):
    script = shutil.which("idaa-train-vae", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed with its console scripts")
    done = subprocess.run([script, *TINY, "--epochs", "1", "--out", str(tmp_path / "vae")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" or "checkpoint" not in done.stderr


@pytest.mark.parametrize("augment", ["simclr", "flip"])
def test_each_augmentation_trains_a_tiny_vae(tmp_path, augment):
    out = run([*TINY, "--augment", augment, "--epochs", "3", "--lr", "2e-3", "--out", str(tmp_path / augment)])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["held_out_mse"] < records[0]["held_out_mse"]


def test_simclr_views_follow_the_authors_recipe():
    torch.manual_seed(0)
    x = torch.rand(512, 3, 32, 32)
    views = vae_training_views(32, "simclr")(x)
    grey = (views[:, 0] == views[:, 1]).flatten(1).all(1) & (views[:, 1] == views[:, 2]).flatten(1).all(1)
    assert views.shape == x.shape and 0.13 < grey.float().mean() < 0.27  # greyscale with p 0.2
    assert not torch.equal(views, x)
    flips = vae_training_views(32, "flip")(x)
    flipped = (flips == x.flip(-1)).flatten(1).all(1)
    assert ((flips == x).flatten(1).all(1) | flipped).all() and 0.4 < flipped.float().mean() < 0.6


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from idaa_transforms import train_vae as tv

    run([*TINY, "--epochs", "2", "--out", str(tmp_path / "straight")])

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
        run(args)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "trainer_state.pt", weights_only=True)["epoch"] == 1
    run([*args, "--resume"])

    straight = IdentityVAE.from_pretrained(tmp_path / "straight").state_dict()
    resumed = IdentityVAE.from_pretrained(tmp_path / "resumed").state_dict()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    losses = [[json.loads(line)["loss"] for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("straight", "resumed")]
    assert losses[0] == losses[1]


def test_stop_after_then_resume_finishes_the_schedule(tmp_path):
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "3", "--stop-after", "1", "--out", str(out)])
    assert epochs_logged(out) == [1] and "epochs: 1 of 3" in (out / "README.md").read_text()
    run([*TINY, "--epochs", "3", "--stop-after", "1", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1, 2]  # epochs of each call, not in total
    run([*TINY, "--epochs", "3", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1, 2, 3] and "epochs: 3 of 3" in (out / "README.md").read_text()


def test_channels_last_as_on_cuda_trains_and_saves_the_same_model(tmp_path, monkeypatch):
    import idaa_transforms.train_vae as module

    run([*TINY, "--epochs", "1", "--out", str(tmp_path / "contiguous")])
    monkeypatch.setattr(module, "memory_format_for", lambda device: torch.channels_last)
    run([*TINY, "--epochs", "1", "--out", str(tmp_path / "channels_last")])
    losses = [json.loads((tmp_path / r / "metrics.jsonl").read_text())["loss"] for r in ("contiguous", "channels_last")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    state = torch.load(tmp_path / "channels_last" / "trainer_state.pt", weights_only=True)["model"]
    assert any(v.dim() == 4 and not v.is_contiguous() for v in state.values())  # it did train in channels_last
    IdentityVAE.from_pretrained(tmp_path / "channels_last")  # the saved folder loads


def test_max_minutes_stops_between_epochs_then_resume_finishes(tmp_path):
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "3", "--max-minutes", "1e-6", "--out", str(out)])  # no second epoch fits
    assert epochs_logged(out) == [1] and "epochs: 1 of 3" in (out / "README.md").read_text()
    run([*TINY, "--epochs", "3", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1, 2, 3]


def test_an_ssl_runs_folder_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="holds an SSL training run \\(results.json\\), not a VAE"):
        run([*TINY, "--epochs", "1", "--out", str(tmp_path), "--overwrite"])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path):
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "1", "--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        run([*TINY, "--epochs", "1", "--seed", "2", "--out", str(out)])
    assert (out / "model.safetensors").read_bytes() == before and epochs_logged(out) == [1]
    with pytest.raises(ValueError, match="--batch-size: 100000 is larger"):  # refused at start-up: nothing replaced
        run([*TINY, "--epochs", "1", "--batch-size", "100000", "--out", str(out), "--overwrite"])
    assert (out / "model.safetensors").read_bytes() == before and epochs_logged(out) == [1]
    run([*TINY, "--epochs", "1", "--seed", "2", "--out", str(out), "--overwrite"])
    assert (out / "model.safetensors").read_bytes() != before


def test_resume_takes_the_checkpoints_metrics_over_a_damaged_file(tmp_path):
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out)])
    with (out / "metrics.jsonl").open("a") as f:  # a run that logged epoch 2 but died before saving it, mid-line
        f.write(json.dumps({"epoch": 2, "loss": 0.0}) + "\n" + '{"epoch": 3, "lo')
    run([*TINY, "--epochs", "2", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1, 2]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[1])["loss"] != 0.0


def test_an_interrupted_state_write_keeps_the_previous_state(tmp_path, monkeypatch):
    from idaa_transforms import _files

    out = tmp_path / "vae"
    run([*TINY, "--epochs", "2", "--save-every", "1", "--stop-after", "1", "--out", str(out)])
    before = (out / "trainer_state.pt").read_bytes()

    write = _files.atomic_write_bytes

    def write_half_then_die(path, data):  # the kill lands inside the state write; other files are written
        if Path(path).name != "trainer_state.pt":
            return write(path, data)
        Path(path).with_name(".trainer_state.pt.tmp").write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(_files, "atomic_write_bytes", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        run([*TINY, "--epochs", "2", "--save-every", "1", "--out", str(out), "--resume"])
    monkeypatch.undo()
    assert (out / "trainer_state.pt").read_bytes() == before
    run([*TINY, "--epochs", "2", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1, 2]


def test_resume_of_an_empty_folder_starts_from_scratch(tmp_path, capsys):
    # As in idaa-train and the harness: the same command with --resume can be repeated from the first call on.
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "1", "--out", str(out), "--resume"])
    assert epochs_logged(out) == [1] and "starting from scratch" in capsys.readouterr().err


def test_resume_of_a_finished_run_without_state_is_refused(tmp_path):
    out = tmp_path / "vae"
    run([*TINY, "--epochs", "1", "--out", str(out)])
    (out / "trainer_state.pt").unlink()  # e.g. a shipped checkpoint folder
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError, match="holds a run.*no trainer_state.pt.*--overwrite"):
        run([*TINY, "--epochs", "1", "--out", str(out), "--resume"])
    assert (out / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("option, value", [("--width", "32"), ("--lr", "1e-3"), ("--batch-size", "16"),
                                           ("--data-dir", "elsewhere"),
                                           ("--kl-weight", "0.5"), ("--epochs", "3"), ("--seed", "5"),
                                           ("--augment", "flip")])
def test_resume_refuses_settings_that_change_the_result(tmp_path, option, value):
    run([*TINY, "--epochs", "2", "--stop-after", "1", "--out", str(tmp_path)])
    args = [*TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"]
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    with pytest.raises(ValueError, match=f"other settings \\(.*{option} .* in it, .* now"):
        run(args)


def test_resume_of_a_foreign_pickle_is_a_clear_error(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match="trainer_state.pt is not a readable training state") as err:
        run([*TINY, "--epochs", "1", "--out", str(tmp_path), "--resume"])
    assert "weights_only=False" not in str(err.value)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr: expected a finite number > 0"),
    (["--lr", "inf"], "--lr: expected a finite number > 0"),
    (["--kl-weight", "-1"], "--kl-weight: expected a finite number >= 0"),
    (["--kl-weight", "nan"], "--kl-weight: expected a finite number >= 0"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got '0'"),
    (["--batch-siz", "8"], "unrecognized arguments: --batch-siz"),
])
def test_bad_values_are_rejected_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit):
        main([*TINY, *argv, "--out", "unused"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "4096"], "--batch-size: 4096 is larger than the training set"),
    (["--device", "tpu"], "--device: 'tpu' is not"),
    (["--image-size", "7"], "--image-size: expected a multiple of 2 ** --num-downsamplings = 4, got 7"),
])
def test_bad_runs_exit_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([*TINY, *argv, "--epochs", "1", "--out", str(tmp_path / "vae")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "vae").exists()  # a run that failed to start leaves no empty --out


def test_an_out_another_run_holds_is_a_one_line_error(tmp_path, capsys):
    with claim_folder(tmp_path / "vae"), pytest.raises(SystemExit) as exit_:
        main([*TINY, "--epochs", "1", "--out", str(tmp_path / "vae")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--out: " in err and "is in use by another run" in err and err.count("\n") == 1


def test_ctrl_c_is_one_line_that_says_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_vae_module, "_train_vae", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main([*TINY, "--epochs", "1", "--out", str(tmp_path / "vae")])
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and err.count("\n") == 1 and "interrupted; the same command with --resume" in err
    assert not (tmp_path / "vae").exists()  # nothing was written: no empty --out left


def test_out_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run([*TINY, "--epochs", "1", "--out", str(tmp_path / "file")])


def test_imagefolder_dataset(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                colour = (200, 30, 30) if label == "a" else (30, 30, 200)
                Image.new("RGB", (40, 48), colour).save(folder / f"{i}.png")
    out = run(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"), "--width", "16",
               "--latent-dim", "8", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path / "vae")])
    assert "imagefolder training split (8 images)" in (out / "README.md").read_text()


def test_metric_rows_of_older_checkpoints_get_todays_keys():
    from idaa_transforms.train_vae import _metric_rows

    old = [{"epoch": 1, "seconds": 10.0, "images_per_second": 100.04}, {"epoch": 2, "seconds": 25.0,
                                                                        "images_per_second": 80.0}]
    assert _metric_rows(old) == [{"epoch": 1, "seconds": 10.0, "images_per_s": 100.0},
                                 {"epoch": 2, "seconds": 15.0, "images_per_s": 80.0}]
    today = [{"epoch": 1, "seconds": 3.0, "images_per_s": 9.0}]
    assert _metric_rows(today) == today


def test_a_subset_run_reports_on_as_many_test_images(tmp_path):
    from idaa_transforms._cifar import CIFAR10_CLASSES
    from helpers import write_class_folders

    write_class_folders(tmp_path / "cifar", CIFAR10_CLASSES, per_class=4)  # 40 train, 40 test images
    out = run(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--subset", "20", "--width", "16",
               "--latent-dim", "8", "--batch-size", "10", "--epochs", "1", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path / "vae")])
    assert json.loads((out / "held_out.json").read_text())["count"] == 20
    assert "held out: a class-balanced subset (seed 0) of 20 of its test split's 40 images" in \
        (out / "README.md").read_text()


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
    assert baseline_metrics((images * 255).round().byte())["downsample_2x_bilinear"] == pytest.approx(
        scores["downsample_2x_bilinear"], abs=0.1)  # uint8 images are read as [0, 1]


class _FixedOutput(IdentityVAE):
    """A VAE whose G(x) is a given function of x, to check the measurements on known answers."""

    def __init__(self, fn):
        super().__init__(VAEConfig(width=8, latent_dim=4, input_mean=(0.0,) * 3, input_std=(1.0,) * 3))
        self.fn = fn

    def encode(self, x):
        return type("E", (), {"mu": x})()

    def decode(self, z):
        return self.fn(z)


def test_colour_ratio_on_known_answers():
    images = torch.rand(8, 3, 32, 32)
    assert colour_ratio(_FixedOutput(lambda x: x), images) == pytest.approx(1.0)
    assert colour_ratio(_FixedOutput(lambda x: x.mean(1, keepdim=True).expand_as(x)), images) == pytest.approx(0.0)
    halfway = lambda x: 0.5 * x + 0.5 * x.mean(1, keepdim=True)  # noqa: E731
    assert colour_ratio(_FixedOutput(halfway), images) == pytest.approx(0.5, abs=1e-5)
    assert reconstruction_metrics(_FixedOutput(lambda x: x), images)["mse"] == pytest.approx(0.0)
    calls = []
    counted = _FixedOutput(lambda x: calls.append(1) or halfway(x))
    both = reconstruction_metrics(counted, images, batch_size=4)
    assert both["colour_ratio"] == pytest.approx(0.5, abs=1e-5) and both["mse"] > 0
    assert len(calls) == 2  # one decode per batch gives the error and the colour together


def test_half_precision_weights_load_into_float32_and_reconstruct_alike(tmp_path):
    full = run([*TINY, "--epochs", "1", "--out", str(tmp_path / "full")])
    half = run([*TINY, "--epochs", "1", "--save-dtype", "float16", "--out", str(tmp_path / "half")])
    weights = lambda folder: (folder / "model.safetensors").stat().st_size  # noqa: E731
    assert weights(half) < 0.6 * weights(full)
    a, b = IdentityVAE.from_pretrained(full), IdentityVAE.from_pretrained(half)
    assert next(b.parameters()).dtype == torch.float32
    x = torch.rand(8, 3, 32, 32)
    from idaa_transforms.train_vae import reconstruct

    assert (reconstruct(a, x) - reconstruct(b, x)).abs().max() < 1e-2


def test_resume_of_a_foreign_torch_file_says_so(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match="is not a training state of idaa-train-vae \\(it lacks model"):
        run([*TINY, "--epochs", "1", "--out", str(tmp_path), "--resume"])
