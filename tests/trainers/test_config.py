"""TrainConfig: the one declaration of the trainers' options, its validation, the settings check and the CLI builder."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from idaa_transforms.trainers.config import (RESUME_SAFE, TrainConfig, add_train_arguments, changed_settings,
                                             config_from_args)


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.dataset, cfg.arch, cfg.method, cfg.idaa, cfg.dual_bn) == ("cifar10", "resnet18", "simclr", True, True)
    assert (cfg.eps, cfg.alpha, cfg.temperature, cfg.lr, cfg.weight_decay) == (0.1, 1.0, 0.5, 3e-4, 1e-6)
    assert (cfg.proj_dim, cfg.proj_hidden, cfg.optimizer, cfg.vae, cfg.subset) == (64, 512, "adam", None, None)


@pytest.mark.parametrize("bad, match", [
    (dict(method="moco"), "method: expected one of"),
    (dict(adversary="pgd"), "adversary: expected one of"),
    (dict(batch_size=0), "batch_size: expected a positive int"),
    (dict(batch_size=1), "batch_size: expected at least 2"),
    (dict(epochs=2.5), "epochs: expected a positive int"),
    (dict(epochs=True), "epochs: expected a positive int"),
    (dict(eps=-1.0), "eps: expected a finite number >= 0"),
    (dict(eps=float("inf")), "eps: expected a finite number >= 0"),
    (dict(pixel_eps=-0.1), "pixel_eps: expected a number in \\[0, 1\\]"),
    (dict(pixel_eps=5.0), "pixel_eps: expected a number in \\[0, 1\\]"),
    (dict(lr=0.0), "lr: expected a finite number > 0"),
    (dict(lr=float("nan")), "lr: expected a finite number > 0"),
    (dict(lr=float("inf")), "lr: expected a finite number > 0"),
    (dict(byol_momentum=1.5), "byol_momentum: expected a number in"),
    (dict(subset=0), "subset: expected a positive int"),
    (dict(device="tpu"), "device: expected cpu, cuda"),
    (dict(idaa="yes"), "idaa: expected True or False"),
    (dict(resume=True, overwrite=True), "give one of them"),
    (dict(warmup_epochs=5, epochs=1), "warmup_epochs: 5 warm-up epochs leave none of the 1 epochs"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_changed_settings_ignores_what_may_change_on_resume():
    saved = TrainConfig(epochs=10, seed=1)
    assert changed_settings(saved, dataclasses.replace(saved, out="elsewhere", no_progress=True,
                                                       stop_after=3, resume=True, device="cpu")) == {}
    assert changed_settings(saved, dataclasses.replace(saved, epochs=20)) == {"epochs": (10, 20)}
    assert changed_settings(saved, dataclasses.replace(saved, data_dir="other")) == {"data_dir": ("data", "other")}
    assert "subset" not in RESUME_SAFE and "epochs" not in RESUME_SAFE and "data_dir" not in RESUME_SAFE


def test_changed_settings_fills_settings_added_since_with_defaults():
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("subset", "knn_temperature")}
    assert changed_settings(old, TrainConfig()) == {}
    assert changed_settings(old, TrainConfig(subset=100)) == {"subset": (None, 100)}


def test_add_train_arguments_covers_every_field_once():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_train_arguments(parser)
    args = parser.parse_args([])
    assert config_from_args(args) == TrainConfig()
    assert set(vars(args)) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_add_train_arguments_with_a_harness_defaults_and_skips():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_train_arguments(parser, defaults={"epochs": 10, "dataset": "photos"}, skip={"seed", "out", "resume"})
    args = parser.parse_args(["--temperature", "0.2", "--attack-steps", "2", "--no-dual-bn", "--optimizer", "sgd"])
    assert (args.epochs, args.dataset) == (10, "photos")
    assert not hasattr(args, "seed") and not hasattr(args, "out")
    cfg = config_from_args(args, seed=3)
    assert (cfg.temperature, cfg.attack_steps, cfg.dual_bn, cfg.optimizer, cfg.seed) == (0.2, 2, False, "sgd", 3)
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        add_train_arguments(argparse.ArgumentParser(), skip={"colour"})
