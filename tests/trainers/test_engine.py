"""The training loop end to end on tiny data: outputs, resume, refusals, and nothing lost when a write is cut off."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from helpers import TINY_RUN
from idaa_transforms import _files
from idaa_transforms.data import load_images
from idaa_transforms.trainers.config import TrainConfig
from helpers import make_vae
from idaa_transforms import IDAATransform
from idaa_transforms.bn import convert_to_dual_bn
from idaa_transforms.trainers import engine
from idaa_transforms.trainers.engine import _DelayedScalar, load_split, read_run, train, train_step, two_views
from idaa_transforms.trainers.evaluation import extract_features
from idaa_transforms.trainers.methods import build_method
from idaa_transforms.views import simclr_views


def tiny(out, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_RUN, "out": str(out), **overrides})


def stable(path):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in _files.read_jsonl(path)]


# -- what a run writes ---------------------------------------------------------------------------------------------
def test_simclr_idaa_run_writes_everything(tmp_path, tiny_vae_dir):
    from PIL import Image

    out = tmp_path / "run"
    result = train(tiny(out, alpha=0.5, vae=tiny_vae_dir))
    rows = _files.read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and result.finished and result.metrics[0].epoch == 1
    assert rows[0]["loss"] == pytest.approx(rows[0]["loss_clean"] + 0.5 * rows[0]["loss_adv"], rel=1e-5)
    assert 0 <= rows[0]["knn_acc"] <= 1 and rows[0]["images_per_s"] > 0
    saved = read_run(out)
    assert saved.knn_acc == result.knn_acc and 0 <= saved.linear_acc <= 1 and saved.config["alpha"] == 0.5
    assert saved.metrics == result.metrics
    assert Image.open(out / "idaa_grid.png").height == 5 * 98 + 2  # x, G, R, x_adv, |x_adv - x|: 32 px shown at 96
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["metrics"] == rows
    adv_counts = [v for k, v in ckpt["model"].items() if k.endswith("adversarial.num_batches_tracked")]
    assert adv_counts and all(int(c) == 2 for c in adv_counts)  # 2 steps, adversarial forwards only
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_baseline_has_no_adversarial_view(tmp_path):
    out = tmp_path / "base"
    train(tiny(out, idaa=False))
    row = _files.read_jsonl(out / "metrics.jsonl")[0]
    assert row["loss_adv"] is None and row["loss"] == pytest.approx(row["loss_clean"])
    assert not (out / "idaa_grid.png").exists()
    assert not any("adversarial" in k for k in torch.load(out / "checkpoint.pt", weights_only=True)["model"])


def test_byol_idaa_run(tmp_path, tiny_vae_dir):
    result = train(tiny(tmp_path, method="byol", vae=tiny_vae_dir))
    assert 0 <= result.linear_acc <= 1
    assert -4 <= result.metrics[0].loss_clean <= 4 and result.metrics[0].loss_adv is not None


def test_channels_last_as_on_cuda_trains_the_same_run(tmp_path, tiny_vae_dir, monkeypatch):
    from idaa_transforms.trainers import engine

    cfg = dict(epochs=1, knn_k=10, vae=tiny_vae_dir, probe_steps=5)
    contiguous = train(tiny(tmp_path / "contiguous", **cfg))
    monkeypatch.setattr(engine, "memory_format_for", lambda device: torch.channels_last)
    channels_last = train(tiny(tmp_path / "channels_last", **cfg))
    assert channels_last.final_loss == pytest.approx(contiguous.final_loss, rel=1e-4)
    state = torch.load(tmp_path / "channels_last" / "checkpoint.pt", weights_only=True)["model"]
    assert any(v.dim() == 4 and v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous()
               for v in state.values())


def test_pixel_fgsm_run_writes_a_three_row_grid(tmp_path):
    from PIL import Image

    result = train(tiny(tmp_path, adversary="pixel_fgsm", pixel_eps=0.02, probe_steps=5))
    assert result.metrics[0].loss_adv is not None
    assert Image.open(tmp_path / "idaa_grid.png").height == 3 * 98 + 2  # x, x_adv, |x_adv - x|


# -- resume ----------------------------------------------------------------------------------------------------------
def test_resume_continues_exactly(tmp_path, tiny_vae_dir):
    cfg = dict(epochs=2, save_every=1, knn_k=10, vae=tiny_vae_dir)
    full = train(tiny(tmp_path / "full", **cfg))
    first = train(tiny(tmp_path / "split", **cfg, stop_after=1))
    assert first.stopped_after == 1 and first.knn_acc is None and not (tmp_path / "split" / "results.json").exists()
    resumed = train(tiny(tmp_path / "split", **cfg, resume=True))
    assert (resumed.knn_acc, resumed.linear_acc) == (full.knn_acc, full.linear_acc)
    assert stable(tmp_path / "split" / "metrics.jsonl") == stable(tmp_path / "full" / "metrics.jsonl")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * (80 // 32)


def test_the_final_evaluation_reuses_the_last_epochs_features(tmp_path, monkeypatch):
    extracted = []

    def counting(backbone, images):
        extracted.append(images.shape[0])
        return extract_features(backbone, images)

    monkeypatch.setattr(engine, "extract_features", counting)
    result = train(tiny(tmp_path, idaa=False, epochs=2))
    assert len(extracted) == 2 * 2  # train and test features for each epoch's kNN monitor, none again at the end
    assert result.knn_acc == result.metrics[-1].knn_acc and 0 <= result.linear_acc <= 1


def test_stop_after_counts_the_epochs_of_each_call(tmp_path):
    first = train(tiny(tmp_path, idaa=False, epochs=3, stop_after=1))
    second = train(tiny(tmp_path, idaa=False, epochs=3, stop_after=1, resume=True))  # the same command again
    assert (first.stopped_after, second.stopped_after) == (1, 2)
    last = train(tiny(tmp_path, idaa=False, epochs=3, stop_after=5, resume=True))
    assert last.finished and [m.epoch for m in last.metrics] == [1, 2, 3]
    # The run's speed covers its three epochs, not only the last call's one.
    images = sum(m.images_per_s * m.seconds for m in last.metrics)
    assert last.images_per_s == pytest.approx(images / sum(m.seconds for m in last.metrics), abs=0.1)
    assert json.loads((tmp_path / "results.json").read_text())["images_per_s"] == last.images_per_s


def test_max_minutes_stops_between_epochs_and_resume_finishes(tmp_path):
    stopped = train(tiny(tmp_path, idaa=False, epochs=3, max_minutes=1e-6))  # no second epoch fits
    assert stopped.stopped_after == 1 and not (tmp_path / "results.json").exists()
    finished = train(tiny(tmp_path, idaa=False, epochs=3, resume=True))
    assert finished.finished and [m.epoch for m in finished.metrics] == [1, 2, 3]


@pytest.mark.parametrize("change", [dict(eps=0.2), dict(epochs=3), dict(data_dir="elsewhere"), dict(subset=40)])
def test_resume_refuses_settings_that_change_the_result(tmp_path, change):
    train(tiny(tmp_path, idaa=False, epochs=2, stop_after=1))
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"other settings \\(.*--{name.replace('_', '-')} .* in the checkpoint, "):
        train(tiny(tmp_path, **{"idaa": False, "epochs": 2, "resume": True, **change}))


def test_resume_after_a_cut_off_metrics_line_uses_the_checkpoints_copy(tmp_path):
    train(tiny(tmp_path, idaa=False, epochs=2, stop_after=1))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 7.1')  # a run killed while writing its second line
    result = train(tiny(tmp_path, idaa=False, epochs=2, resume=True))
    assert [m.epoch for m in result.metrics] == [1, 2]
    assert [row["epoch"] for row in _files.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_write_cut_off_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    train(tiny(tmp_path, idaa=False, epochs=2, stop_after=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def killed(fd):  # the process dies after writing part of the temporary file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(_files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, idaa=False, epochs=2, resume=True))
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert [row["epoch"] for row in _files.read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert train(tiny(tmp_path, idaa=False, epochs=2, resume=True)).finished


def test_resume_of_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the pickle ran')",))

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="checkpoint.pt is not a readable training state") as err, \
            warnings.catch_warnings():
        warnings.filterwarnings("error", message="Detected pickle protocol")  # the one-line error, no torch note
        train(tiny(tmp_path, idaa=False, resume=True))
    assert "weights_only=False" not in str(err.value)


def test_resume_of_a_foreign_torch_file_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a checkpoint of these trainers"):
        train(tiny(tmp_path, idaa=False, resume=True))


# -- refusals --------------------------------------------------------------------------------------------------------
def test_a_fresh_run_over_a_finished_one_is_refused_unless_overwrite(tmp_path):
    first = train(tiny(tmp_path, idaa=False))
    results = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        train(tiny(tmp_path, idaa=False, seed=1))
    assert (tmp_path / "results.json").read_bytes() == results
    with pytest.raises(ValueError, match="batch_size: 128 is larger"):  # refused at start-up: nothing is replaced
        train(tiny(tmp_path, idaa=False, seed=1, overwrite=True, batch_size=128))
    assert (tmp_path / "results.json").read_bytes() == results and (tmp_path / "checkpoint.pt").is_file()
    again = train(tiny(tmp_path, idaa=False, seed=1, overwrite=True))
    assert read_run(tmp_path).config["seed"] == 1 and again.metrics != first.metrics


def test_a_comparisons_folder_is_refused_even_with_resume(tmp_path):
    (tmp_path / "calls.jsonl").write_text("{}\n")  # a comparison's --out: its runs live in subfolders
    with pytest.raises(ValueError, match="holds a comparison \\(calls.jsonl\\), not an SSL training run"):
        train(tiny(tmp_path, idaa=False, resume=True))
    assert [p.name for p in tmp_path.iterdir()] == ["calls.jsonl"]


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_out_that_cannot_hold_a_run_is_a_clear_error(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" if where == "file" else tmp_path / "a-file" / "run"
    with pytest.raises(ValueError, match="--out: .*(is a file|cannot write)"):
        train(tiny(out, idaa=False))


def test_a_run_killed_before_its_first_checkpoint_is_refused_with_what_resume_does(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')  # killed after an epoch's line, before any checkpoint
    with pytest.raises(ValueError, match="stopped before its first checkpoint .*pass --resume to start it again"):
        train(tiny(tmp_path, idaa=False))
    assert train(tiny(tmp_path, idaa=False, resume=True)).finished


def test_a_folder_another_run_holds_is_refused_untouched(tmp_path):
    train(tiny(tmp_path, idaa=False, epochs=2, stop_after=1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with _files.claim_folder(tmp_path):  # another process training this run
        with pytest.raises(ValueError, match="--out: .* is in use by another run .*choose another --out"):
            train(tiny(tmp_path, idaa=False, epochs=2, resume=True))
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".lock"} == before
    assert train(tiny(tmp_path, idaa=False, epochs=2, resume=True)).finished


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size: 128 is larger than the training set"):
        train(tiny(tmp_path, idaa=False, batch_size=128))


def test_delayed_scalar_reads_what_was_sent():
    reader = _DelayedScalar(torch.device("cpu"))
    assert reader.read() is None  # nothing sent yet
    reader.send(torch.tensor(6.0), 3)
    assert reader.read() == (6.0, 3)


def test_read_run_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        read_run(tmp_path)


# -- data --------------------------------------------------------------------------------------------------------
def test_load_split_reads_a_local_cifar10(tmp_path, monkeypatch):
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
    images, labels = load_split(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), download=False), train=False)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32) and labels.tolist() == [5, 6, 2, 3]
    expected = np.frombuffer(pickle.loads((folder / "test_batch").read_bytes())["data"][0], np.uint8)
    assert np.array_equal(images[0].numpy().reshape(-1), expected)


def test_load_split_reads_an_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 48), colour).save(tmp_path / split / cls / f"{i}.png")
    images, labels = load_split(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path)), train=True)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.dtype == torch.uint8 and bool((images[0, 0] == 255).all()) and bool((images[-1, 2] == 255).all())


def test_subset_is_class_balanced_fixed_across_seeds_and_caps_the_test_split():
    cfg = TrainConfig(**{**TINY_RUN, "subset": 20})
    images, labels = load_split(cfg, train=True)
    assert images.shape[0] == 20 and labels.bincount().tolist() == [4, 4, 4, 4, 4]
    again, _ = load_split(TrainConfig(**{**TINY_RUN, "subset": 20, "seed": 3}), train=True)
    assert torch.equal(images, again)  # the same images for every seed
    test_images, test_labels = load_split(cfg, train=False)
    assert test_images.shape[0] == 20 and test_labels.bincount().tolist() == [4, 4, 4, 4, 4]
    full, _ = load_split(TrainConfig(**{**TINY_RUN, "subset": 500}), train=False)
    assert full.shape[0] == 80  # at most the test split's size


def test_training_on_a_subset(tmp_path):
    result = train(tiny(tmp_path, idaa=False, crops_per_photo=32, subset=64))
    assert result.finished and result.images_per_s > 0
    assert read_run(tmp_path).config["subset"] == 64


def test_train_step_returns_its_loss_terms_and_steps_the_optimiser():
    torch.manual_seed(0)
    model = convert_to_dual_bn(build_method("simclr", "small_cnn"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    v1, v2 = two_views(simclr_views(32), images)
    assert v1.shape == (16, 3, 32, 32) and v1.dtype == torch.float32 and not torch.equal(v1, v2)

    before = [p.detach().clone() for p in model.parameters()]
    plain = train_step(model, optimizer, v1, v2)
    assert plain.shape == (3,) and plain[2] == 0 and plain[0] == plain[1] and not plain.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    idaa = IDAATransform(make_vae(), encoder=model.encoder, eps=0.1, use_adversarial_bn=True)
    loss, clean, adv = train_step(model, optimizer, v1, v2, adversary=idaa, alpha=0.5)
    assert adv > 0 and loss == pytest.approx(float(clean + 0.5 * adv), rel=1e-6)
