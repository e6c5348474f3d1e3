"""The converter of original IDAA checkpoints, checked against a re-implementation of the original model classes."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import dies_writing
from idaa_transforms import CheckpointError, IDAATransform, IdentityVAE, _files
from idaa_transforms.convert import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    ConversionError,
    convert_original_checkpoint,
    convert_state_dict,
    main,
    to_original_state_dict,
)


# -- the original classes' key layout and forward pass (CVAE_cifar_withbn / CVAE_imagenet_withbn) -------------------
class RefResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.LeakyReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.LeakyReLU(),
                                   nn.Conv2d(c, c, 1, 1, 0))

    def forward(self, x):
        return x + self.convs(x)


def _down(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _up(c_in, c_out):
    return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(inplace=True)]


class RefVAE(nn.Module):
    def __init__(self, variant: str, d: int, z: int) -> None:
        super().__init__()
        if variant == "cifar":
            self.f = 8
            self.encoder = nn.Sequential(*_down(3, d // 2), *_down(d // 2, d), RefResBlock(d), nn.BatchNorm2d(d),
                                         RefResBlock(d))
            self.decoder = nn.Sequential(RefResBlock(d), nn.BatchNorm2d(d), RefResBlock(d), nn.BatchNorm2d(d),
                                         *_up(d, d // 2), nn.ConvTranspose2d(d // 2, 3, 4, 2, 1, bias=False))
        else:
            self.f = 7
            chans = [3, d // 16, d // 8, d // 4, d // 2, d]
            self.encoder = nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in _down(a, b)],
                                         RefResBlock(d), nn.BatchNorm2d(d), RefResBlock(d), nn.BatchNorm2d(d))
            rev = chans[::-1]
            self.decoder = nn.Sequential(nn.BatchNorm2d(d), RefResBlock(d), nn.BatchNorm2d(d), RefResBlock(d),
                                         nn.BatchNorm2d(d), *[m for a, b in zip(rev[:4], rev[1:5]) for m in _up(a, b)],
                                         nn.ConvTranspose2d(d // 16, 3, 4, 2, 1, bias=False))
        self.bn = nn.BatchNorm2d(3)
        self.d, self.z = d, z
        self.fc11 = nn.Linear(d * self.f**2, z)
        self.fc12 = nn.Linear(d * self.f**2, z)
        self.fc21 = nn.Linear(z, d * self.f**2)

    def encode(self, x):
        h = self.encoder(x).view(-1, self.d * self.f**2)
        return self.fc11(h), self.fc12(h)

    def decode(self, z):
        return torch.tanh(self.decoder(z.view(-1, self.d, self.f, self.f)))

    def forward(self, x):  # eval mode: z = mu
        mu, logvar = self.encode(x)
        return self.bn(self.decode(self.fc21(mu))), mu, logvar


def _reference(variant: str, d: int = 16, z: int = 8, seed: int = 0) -> RefVAE:
    torch.manual_seed(seed)
    ref = RefVAE(variant, d, z)
    with torch.no_grad():  # non-trivial eval-mode BatchNorms and biases
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.num_batches_tracked.fill_(123)
    return ref.eval()


CASES = {"cifar": 32, "imagenet": 224}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per variant: the reference model, its original checkpoint file and the converted folder."""
    out = {}
    for variant in CASES:
        ref = _reference(variant)
        path = tmp_path_factory.mktemp(variant) / f"vae_{variant}.pth"
        torch.save(ref.state_dict(), path)
        convert_original_checkpoint(path, path.parent / "hub")
        out[variant] = (variant, ref, path, path.parent / "hub")
    return out


@pytest.fixture(params=sorted(CASES))
def converted(request, checkpoints):
    return checkpoints[request.param]


def test_converted_model_matches_reference(converted):
    variant, ref, path, out = converted
    vae = IdentityVAE.from_pretrained(out)
    size = CASES[variant]
    assert vae.config.image_size == size and vae.config.width == 16 and vae.config.latent_dim == 8
    assert vae.config.output_norm == "tanh_batchnorm"
    assert vae.config.bottleneck_norm == (variant == "imagenet")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_gx, ref_mu, ref_logvar = ref(x)
        enc = vae.encode(x)
        gx = vae.decode(enc.mu)
        recon = vae(x).reconstruction
    torch.testing.assert_close(enc.mu, ref_mu, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.logvar, ref_logvar, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx, ref_gx, atol=1e-5, rtol=0)
    torch.testing.assert_close(recon, ref_gx, atol=1e-5, rtol=0)
    # Every tensor came across, running statistics and counters included.
    state = vae.state_dict()
    assert state["encoder_stages.0.norm.num_batches_tracked"].item() == 123
    torch.testing.assert_close(state["output_norm.running_var"], ref.bn.running_var, atol=0, rtol=0)


def test_hub_folder_and_model_card(converted):
    variant, _, path, out = converted
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    config = json.loads((out / "config.json").read_text())
    mean = CIFAR_MEAN if variant == "cifar" else IMAGENET_MEAN
    assert tuple(config["input_mean"]) == pytest.approx(mean)
    card = (out / "README.md").read_text()
    assert "converted" in card.lower() and path.name in card and variant in card
    assert "library_name: idaa_transforms" in card


def test_identity_of_idaa_transform_matches_reference_gx(checkpoints):
    _, ref, _, out = checkpoints["cifar"]
    vae = IdentityVAE.from_pretrained(out)
    idaa = IDAATransform(vae, loss_fn=lambda x, x_adv: (x_adv - x).pow(2).sum(), mean=CIFAR_MEAN, std=CIFAR_STD)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = (pixels - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref_gx = ref(x)[0]
    parts = idaa.decompose(x)
    torch.testing.assert_close(parts.reconstruction, ref_gx, atol=1e-5, rtol=0)
    torch.testing.assert_close(parts.reconstruction + parts.residual, x, atol=1e-5, rtol=0)


def test_cli(tmp_path, capsys):
    ref = _reference("cifar", seed=3)
    path = tmp_path / "ckpt.pth"
    torch.save(ref.state_dict(), path)
    out = tmp_path / "out"
    assert main([str(path), str(out)]) == 0
    assert "cifar" in capsys.readouterr().out
    vae = IdentityVAE.from_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vae(x).reconstruction, ref(x)[0], atol=1e-5, rtol=0)
    # An existing checkpoint is kept unless --overwrite is given.
    assert main([str(path), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    options = ["--overwrite", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    assert main([str(path), str(out), *options]) == 0
    assert IdentityVAE.from_pretrained(out).config.input_std == (0.25, 0.25, 0.25)
    # Errors name the file and exit with status 2.
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    assert main([str(bad), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unrecognised layout" in err
    assert not (tmp_path / "out2" / "config.json").exists()


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module", "module+state_dict"])
def test_wrapped_and_dataparallel_checkpoints(tmp_path, wrap):
    ref = _reference("cifar", seed=4)
    state = ref.state_dict()
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    if "state_dict" in wrap:
        state = {"state_dict": state, "epoch": 200}
    elif wrap == "model":
        state = {"model": state, "optimizer": {"lr": 0.1}}
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    vae = convert_original_checkpoint(path, tmp_path / "out")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vae(x).reconstruction, ref(x)[0], atol=1e-5, rtol=0)


def test_unrecognised_layouts_are_rejected_with_the_file_and_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict(), path)
    with pytest.raises(ConversionError, match="resnet.pth: unrecognised layout") as info:
        convert_original_checkpoint(path, tmp_path / "out")
    assert "0.weight" in str(info.value)  # the keys that were found
    assert isinstance(info.value, CheckpointError)

    state = _reference("cifar").state_dict()
    del state["decoder.2.convs.4.bias"]
    state["decoder.9.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(ConversionError, match="edited.pth") as info:
        convert_original_checkpoint(path, tmp_path / "out")
    message = str(info.value)
    assert "missing keys: decoder.2.convs.4.bias" in message and "unexpected keys: decoder.9.weight" in message

    state = _reference("cifar").state_dict()
    state["fc12.weight"] = torch.zeros(8, 10)
    with pytest.raises(ConversionError, match="wrong shapes: fc12.weight"):
        convert_state_dict(state, source="shapes.pth")

    with pytest.raises(ConversionError, match="no such file"):
        convert_original_checkpoint(tmp_path / "absent.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_round_trip_to_original_names():
    ref = _reference("imagenet", seed=5)
    vae = convert_state_dict(ref.state_dict())
    back = to_original_state_dict(vae)
    assert back.keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(back[key], value), key


def test_checkpoints_without_batchnorm_counters_are_accepted():
    ref = _reference("cifar", seed=6)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    vae = convert_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vae(x).reconstruction, ref(x)[0], atol=1e-5, rtol=0)


# -- bad inputs: each a one-line error, nothing written --------------------------------------------------------------
class Opaque:
    """A class a weights-only load refuses to unpickle (a whole pickled model looks like this)."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello world\nthis is a text file\n", r"not a PyTorch checkpoint, or a cut-off one \(KeyError\)"),
        (b"", r"not a PyTorch checkpoint, or a cut-off one \(EOFError\)"),
        (bytes(range(256)) * 4, r"not a PyTorch checkpoint \(its bytes are not a tensor pickle\)"),
        ("pickled object", r"holds Python objects other than tensors .* never unpickled"),
        ("cut-off checkpoint", r"not a PyTorch checkpoint, or a cut-off one"),
        ("folder", r"is a folder; pass the \.pth file"),
    ],
)
def test_unreadable_checkpoint_is_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "input.pth"
    if content == "pickled object":
        torch.save({"model": Opaque()}, path)
    elif content == "cut-off checkpoint":
        torch.save(_reference("cifar").state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main([str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"idaa-convert-original: error: {path}: ")
    assert re.search(message, err), err
    assert "weights_only=False" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_pickled_object_is_never_executed(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(Opaque, "__reduce__", lambda self: (ran.append, ("executed",)), raising=False)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Opaque()}, f, protocol=2)
    ran.clear()
    with pytest.raises(ConversionError, match="evil.pth"):
        convert_original_checkpoint(path, tmp_path / "out")
    assert ran == []


@pytest.mark.parametrize("where", ["a file", "inside a file", "unwritable parent", "unwritable folder"])
def test_out_dir_that_cannot_hold_the_checkpoint(tmp_path, capsys, monkeypatch, where):
    path = tmp_path / "vae.pth"
    torch.save(_reference("cifar").state_dict(), path)
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "locked").mkdir()
    out = {"a file": tmp_path / "taken", "inside a file": tmp_path / "taken" / "out",
           "unwritable parent": tmp_path / "locked" / "out", "unwritable folder": tmp_path / "locked"}[where]

    def refuse(file, *args, **kwargs):  # permission bits do not bind root, so the refusal is simulated
        raise PermissionError(13, "Permission denied", str(file))

    if where == "unwritable parent":
        monkeypatch.setattr(Path, "mkdir", refuse)
    elif where == "unwritable folder":
        monkeypatch.setattr(_files, "open", refuse, raising=False)
    assert main([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    expected = f"{out} is a file, not a folder" if where == "a file" else f"cannot write to {out}"
    assert "error: out_dir: " in err and expected in err, err
    assert (tmp_path / "taken").read_text() == "a file"
    assert list((tmp_path / "locked").iterdir()) == []  # nothing half-written


def test_users_readme_is_kept_without_overwrite(tmp_path, capsys):
    path = tmp_path / "vae.pth"
    torch.save(_reference("cifar").state_dict(), path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    assert main([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds README.md" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]
    assert (out / "README.md").read_text() == "my notes"
    assert main([str(path), str(out), "--overwrite"]) == 0
    assert "converted" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--std", "nan", "0.2", "0.2"], "argument --std: expected a finite number > 0, got 'nan'"),
        (["--std", "0.2", "0", "0.2"], "argument --std: expected a finite number > 0, got '0'"),
        (["--mean", "0.5", "inf", "0.5"], "argument --mean: expected a finite number, got 'inf'"),
        (["--eps", "inf"], "unrecognized arguments: --eps inf"),
        (["--over"], "unrecognized arguments: --over"),  # no prefix matching (allow_abbrev=False)
    ],
)
def test_cli_rejects_bad_options(tmp_path, capsys, options, message):
    path = tmp_path / "vae.pth"
    torch.save(_reference("cifar").state_dict(), path)
    with pytest.raises(SystemExit) as info:
        main([str(path), str(tmp_path / "out"), *options])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values", [dict(input_std=(0.2, float("nan"), 0.2)),
                                    dict(input_mean=(0.5, 0.5, float("inf")))])
def test_non_finite_normalisation_is_rejected(tmp_path, values):
    path = tmp_path / "vae.pth"
    torch.save(_reference("cifar").state_dict(), path)
    name = next(iter(values))
    with pytest.raises(ConversionError, match=rf"VAEConfig\.{name}: expected 3 finite numbers"):
        convert_original_checkpoint(path, tmp_path / "out", **values)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("victim", ["README.md", "model.safetensors", "config.json"])
def test_interrupted_conversion_keeps_the_previous_output(tmp_path, monkeypatch, victim):
    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    torch.save(_reference("cifar", seed=7).state_dict(), first)
    torch.save(_reference("cifar", seed=8).state_dict(), second)
    out = tmp_path / "out"
    convert_original_checkpoint(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(_files, "open", dies_writing(victim), raising=False)
    with pytest.raises(KeyboardInterrupt):
        convert_original_checkpoint(second, out, overwrite=True)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after[victim] == before[victim]  # the file being written when the run died is the previous one, whole
    assert sorted(after) == sorted(before)  # and no temporary file is left behind
    IdentityVAE.from_pretrained(out)  # the folder still loads


def test_model_card_is_a_hub_card(converted):
    from huggingface_hub import ModelCard

    variant, _, _, out = converted
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "idaa_transforms"
    assert card.data.tags == ["idaa", "vae", "converted", variant]
    assert "## Usage" in card.text and "## License" in card.text
