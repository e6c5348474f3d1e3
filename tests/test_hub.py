"""Checkpoint folders (``_hub``) through the VAE: local folders, a populated Hub cache, every failure, interrupted
writes, the Hub options and the model card; no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from helpers import dies_writing
from idaa_transforms import CheckpointError, HubOptions, IDAATransform, IdentityVAE, VAEConfig
from idaa_transforms import _files, _hub
from idaa_transforms.data import EVAL_PHOTOS, photo_crops
from idaa_transforms.vae import DEFAULT_CHECKPOINT

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "idaa-test/tiny-vae"


@pytest.fixture
def tiny_vae() -> IdentityVAE:
    torch.manual_seed(0)
    vae = IdentityVAE(VAEConfig(width=16, latent_dim=8))
    for m in vae.modules():  # non-trivial BatchNorm statistics, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return vae.eval()


def populate_cache(cache: Path, checkpoint: Path, repo: str = REPO) -> Path:
    """Lay ``checkpoint``'s files out exactly as huggingface_hub's cache does (blobs, refs/main, snapshots/<rev>)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for i, file in enumerate(sorted(checkpoint.iterdir())):
        blob = root / "blobs" / f"{i:040d}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def assert_same_model(a: IdentityVAE, b: IdentityVAE) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(a.eval().decode(a.encode(x).mu), b.eval().decode(b.encode(x).mu))


def test_save_and_load_local_folder(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["latent_dim"] == 8
    loaded = IdentityVAE.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert_same_model(tiny_vae, loaded)


def test_weights_are_safetensors_not_pickle(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:9]
    header_len = int.from_bytes(head[:8], "little")
    assert head[8:9] == b"{" and header_len > 0  # safetensors: u64 header length, then a JSON header


def test_repo_id_from_populated_cache_offline(tiny_vae, tmp_path, monkeypatch):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = IdentityVAE.from_pretrained(REPO, cache_dir=tmp_path / "cache")
    assert_same_model(tiny_vae, loaded)
    idaa = IDAATransform.from_pretrained(REPO, cache_dir=tmp_path / "cache", loss_fn=lambda x, a: a.sum(), eps=0.2)
    assert idaa.eps == 0.2 and idaa.vae.config == tiny_vae.config


def test_repo_id_local_files_only_with_revision(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    loaded = IdentityVAE.from_pretrained(REPO, cache_dir=tmp_path / "cache", local_files_only=True, revision=COMMIT)
    assert_same_model(tiny_vae, loaded)


def test_offline_cache_in_a_fresh_process(tiny_vae, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before huggingface_hub is imported, as a user would."""
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    code = f"from idaa_transforms import IdentityVAE; print(IdentityVAE.from_pretrained({REPO!r}).config.latent_dim)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"


def test_missing_repo_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"idaa-test/absent': no such folder, and config\.json of Hub repo "
                                              r"'idaa-test/absent' is unavailable: offline mode is on and it is not "
                                              r"in the cache"):
        IdentityVAE.from_pretrained("idaa-test/absent", cache_dir=tmp_path)


def test_missing_file_in_cached_repo(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    snapshot = populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors of Hub repo 'idaa-test/tiny-vae'"):
        IdentityVAE.from_pretrained(REPO, cache_dir=tmp_path / "cache", local_files_only=True)


def test_missing_file_in_local_folder(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors.*save_pretrained"):
        IdentityVAE.from_pretrained(tmp_path)


def test_not_a_folder_nor_repo_id():
    with pytest.raises(CheckpointError, match=r"'bad name/x!': no such folder, and not a valid Hub repo id"):
        IdentityVAE.from_pretrained("bad name/x!")


def test_corrupted_safetensors(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file.*re-save the "
                                              r"checkpoint \(save_pretrained\)"):
        IdentityVAE.from_pretrained(tmp_path)  # a local folder: nothing to download again


def test_corrupted_safetensors_in_the_hub_cache(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    snapshot = populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    (snapshot / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file.*force_download=True"):
        IdentityVAE.from_pretrained(REPO, cache_dir=tmp_path / "cache", local_files_only=True)


def test_pickle_file_is_refused(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    torch.save(tiny_vae.state_dict(), tmp_path / "model.safetensors")  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        IdentityVAE.from_pretrained(tmp_path)


def test_config_shapes_do_not_match_weights(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["latent_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match its config\.json: shape mismatch.*fc_mu\.weight"):
        IdentityVAE.from_pretrained(tmp_path)


def test_unknown_config_key(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["dropout"] = 0.1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown VAE config key\(s\) \['dropout'\]"):
        IdentityVAE.from_pretrained(tmp_path)


def test_invalid_config_json(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        IdentityVAE.from_pretrained(tmp_path)


def test_shipped_default_loads_offline_and_reconstructs():
    folder = _hub.shipped_checkpoint_dir(DEFAULT_CHECKPOINT)
    assert (folder / "README.md").is_file()
    assert (folder / "model.safetensors").stat().st_size < 30 * 2**20
    vae = IdentityVAE.from_pretrained()
    assert vae.config.image_size == 32 and vae.config.in_channels == 3
    # It learned something: on crops of photographs it never saw, G(x) is far closer to x than a fresh VAE's.
    x = photo_crops(EVAL_PHOTOS, crops_per_photo=8, split="all", seed=3).tensors[0]
    idaa = IDAATransform(vae, loss_fn=lambda a, b: b.sum())
    trained_err = idaa.decompose(x).residual.pow(2).mean()
    torch.manual_seed(0)
    untrained_err = IDAATransform(IdentityVAE(vae.config), loss_fn=lambda a, b: b.sum()).decompose(x).residual.pow(2).mean()
    assert trained_err < 0.015 and untrained_err > 0.05


def test_push_to_hub_uploads_a_loadable_checkpoint(tiny_vae, tmp_path, monkeypatch):
    """push_to_hub goes through huggingface_hub's HfApi; the folder it uploads loads back (network calls replaced)."""
    from huggingface_hub import HfApi

    uploaded = {}

    class Repo:
        repo_id = REPO

    def fake_create_repo(self, repo_id, **kwargs):
        return Repo()

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        uploaded["repo_id"] = repo_id
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    assert tiny_vae.push_to_hub(REPO) == "commit-url"
    assert uploaded["repo_id"] == REPO
    assert {p.name for p in (tmp_path / "uploaded").iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert_same_model(tiny_vae, IdentityVAE.from_pretrained(tmp_path / "uploaded"))


# -- names that are not a folder: a local path is never looked up on the Hub -----------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if the Hub is asked for anything."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"hf_hub_download was called with {args}")

    monkeypatch.setattr(_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("./runs/vae-cifar10", "it starts like a path"),
        ("../vae-cifar10", "it starts like a path"),
        ("/no/such/vae", "it starts like a path"),
        ("~/no-such-vae", "it starts like a path"),
        ("runs/cifar/vae", "Hub repo ids have at most one '/'"),
        ("tests/vae-cifar10", "its parent folder 'tests' exists"),
        ("idaa-vae-cifar1", "checkpoints on the Hub have ids of the form 'org/name'"),  # a typo, no 23 s of retries
        (Path("vae-cifar10"), "it was given as a Path"),
    ],
)
def test_mistyped_local_path_is_not_looked_up_on_the_hub(no_network, name, reason):
    with pytest.raises(CheckpointError) as info:
        IdentityVAE.from_pretrained(name)
    message = str(info.value)
    assert message.startswith(f"{str(name)!r}: no such folder, and not looked up as a Hub repo ({reason})"), message
    assert "\n" not in message


def test_unknown_name_says_no_folder_and_no_hub_repo(monkeypatch):
    def not_found(*args, **kwargs):
        raise _hub.RepositoryNotFoundError.__new__(_hub.RepositoryNotFoundError)

    monkeypatch.setattr(_hub, "hf_hub_download", not_found)
    with pytest.raises(CheckpointError, match=r"^'runs-x/vae': no such folder, and no such Hub repo \(or it is "
                                              r"private"):
        IdentityVAE.from_pretrained("runs-x/vae")


def test_a_file_is_not_a_checkpoint_folder(tiny_vae, tmp_path, no_network):
    tiny_vae.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors' is a file; pass the checkpoint folder"):
        IdentityVAE.from_pretrained(str(tmp_path / "model.safetensors"))


# -- config.json values: each wrong value is a one-line error naming its key -----------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("input_mean", None, r"input_mean: expected 3 finite numbers \(one per channel\), got None"),
        ("input_mean", "abc", r"input_mean: expected 3 finite numbers \(one per channel\), got 'abc'"),
        ("input_std", [0.5, float("nan"), 0.5], r"input_std: expected 3 finite numbers .*got \(0\.5, nan, 0\.5\)"),
        ("input_mean", [0.5, float("inf"), 0.5], r"input_mean: expected 3 finite numbers .*got \(0\.5, inf, 0\.5\)"),
        ("input_std", [0.5, "x", 0.5], r"input_std: expected 3 finite numbers"),
        ("bottleneck_norm", "yes", r"bottleneck_norm: expected true or false, got 'yes'"),
        ("output_norm", ["tanh"], r"output_norm: expected one of \('tanh', 'tanh_batchnorm'\), got \['tanh'\]"),
        ("latent_dim", 8.0, r"latent_dim: expected a positive int, got 8\.0"),
    ],
)
def test_wrong_config_value_names_the_key(tiny_vae, tmp_path, key, value, message):
    tiny_vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))  # json writes NaN and Infinity as such
    with pytest.raises(CheckpointError, match=rf"config\.json: VAEConfig\.{message}") as info:
        IdentityVAE.from_pretrained(tmp_path)
    assert "does not match" not in str(info.value) and "\n" not in str(info.value)


# -- the Hub options: declared once, validated once, passed through ------------------------------------------------
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(map_location="meta"), ValueError, r"map_location='meta': the meta device holds no data"),
        (dict(map_location="gpu0"), ValueError, r"map_location: expected a device such as 'cpu' or 'cuda', got 'gpu0'"),
        (dict(map_location=0.5), TypeError, r"map_location: expected a device"),
        (dict(revision=3), TypeError, r"revision: expected a str or None, got 3"),
        (dict(local_files_only="yes"), TypeError, r"local_files_only: expected True or False, got 'yes'"),
        (dict(force_download=1), TypeError, r"force_download: expected True or False, got 1"),
    ],
)
def test_bad_hub_options_are_one_line_errors(tiny_vae, tmp_path, options, error, message):
    tiny_vae.save_pretrained(tmp_path)
    for load in (IdentityVAE.from_pretrained, IDAATransform.from_pretrained):
        with pytest.raises(error, match=message) as info:
            load(tmp_path, **options)
        assert "\n" not in str(info.value)


def test_misspelt_hub_option(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"^IdentityVAE\.from_pretrained: unexpected keyword argument\(s\) "
                                        r"\['revison'\]; the Hub options are revision, cache_dir, force_download, "
                                        r"local_files_only, token, map_location\.$"):
        IdentityVAE.from_pretrained(tmp_path, revison="main")
    with pytest.raises(TypeError, match="unexpected keyword argument 'revison'"):  # the transform's own options
        IDAATransform.from_pretrained(tmp_path, revison="main")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_map_location_without_a_gpu(tiny_vae, tmp_path, device):
    tiny_vae.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"map_location='cuda(:\d)?': CUDA is not available on this machine; use "
                                         r"map_location='cpu'\.$"):
        IdentityVAE.from_pretrained(tmp_path, map_location=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_map_location(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    loaded = IdentityVAE.from_pretrained(tmp_path, map_location="cuda")
    assert all(p.is_cuda for p in loaded.parameters()) and all(b.is_cuda for b in loaded.buffers())
    assert_same_model(tiny_vae, loaded.cpu())
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"this machine has {count} CUDA device\(s\)"):
        IdentityVAE.from_pretrained(tmp_path, map_location=f"cuda:{count}")


def test_transform_passes_hub_options_through_once(tiny_vae, tmp_path, monkeypatch):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    seen = []
    real = _hub.find_checkpoint

    def spy(name, options, *args, **kwargs):
        seen.append(options)
        return real(name, options, *args, **kwargs)

    monkeypatch.setattr("idaa_transforms.vae.find_checkpoint", spy)
    options = dict(revision=COMMIT, cache_dir=tmp_path / "cache", force_download=False, local_files_only=True,
                   token=False, map_location="cpu")
    idaa = IDAATransform.from_pretrained(REPO, loss_fn=lambda x, a: a.sum(), eps=0.3, **options)
    assert idaa.eps == 0.3
    assert seen == [HubOptions(**options)]
    assert HubOptions.split({**options, "eps": 0.3}) == (options, {"eps": 0.3})


# -- writes: atomic, so an interrupted save leaves the previous checkpoint whole ------------------------------------
def test_config_and_weights_are_written_atomically(tiny_vae, tmp_path, monkeypatch):
    calls = []
    real = _files.atomic_write_bytes

    def spy(path, data):
        calls.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(_hub, "atomic_write_bytes", spy)
    monkeypatch.setattr(_files, "atomic_write_bytes", spy)  # atomic_write_text goes through it
    tiny_vae.save_pretrained(tmp_path)
    assert sorted(calls) == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "README.md"])
def test_interrupted_save_keeps_the_previous_checkpoint(tiny_vae, tmp_path, monkeypatch, victim):
    tiny_vae.save_pretrained(tmp_path)
    if victim == "README.md":
        (tmp_path / "README.md").unlink()  # a card is written only where there is none
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = IdentityVAE(VAEConfig(width=16, latent_dim=8, bottleneck_norm=True))
    monkeypatch.setattr(_files, "open", dies_writing(victim), raising=False)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(tmp_path)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.get(victim) == before.get(victim)  # the file being written is the previous one, whole (or none)
    assert sorted(after) == sorted(before)  # no truncated or temporary file left behind
    if victim == "model.safetensors":  # killed on the first write: the previous checkpoint is whole
        assert_same_model(tiny_vae, IdentityVAE.from_pretrained(tmp_path))


def test_write_config_refuses_non_finite_values(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: cannot store these settings"):
        _hub.write_config(tmp_path, {"input_std": [float("nan")]})
    assert not (tmp_path / "config.json").exists()


def test_model_card_reads_back_as_a_hub_card(tiny_vae, tmp_path):
    from huggingface_hub import ModelCard

    tiny_vae.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "idaa_transforms" and card.data.tags == ["idaa", "vae"]
    assert card.text.startswith("\n# IdentityVAE (32 px, latent 8, width 16)")
    kept = "my own card\n"
    (tmp_path / "README.md").write_text(kept)
    tiny_vae.save_pretrained(tmp_path)  # a card already there (e.g. the trainer's) is kept
    assert (tmp_path / "README.md").read_text() == kept


def test_state_dict_check_lists_missing_and_unexpected(tiny_vae):
    state = dict(tiny_vae.state_dict())
    state.pop("fc_mu.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"ckpt does not match its config\.json: missing \['fc_mu\.bias'\]; "
                                              r"unexpected \['extra\.weight'\]"):
        _hub.check_state_dict(tiny_vae, state, "ckpt")
