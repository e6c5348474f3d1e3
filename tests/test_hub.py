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

from idaa_transforms import CheckpointError, HubOptions, IDAATransform, IdentityVAE, VAEConfig
from idaa_transforms import _files, _hub
from idaa_transforms.data import EVAL_PHOTOS, photo_crops
from idaa_transforms.vae import DEFAULT_CHECKPOINT

load_vae = IdentityVAE.from_pretrained

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
    loaded = load_vae(REPO, cache_dir=tmp_path / "cache", local_files_only=True, revision=COMMIT)
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
        load_vae("idaa-test/absent", cache_dir=tmp_path)


def test_missing_file_in_cached_repo(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "ckpt")
    snapshot = populate_cache(tmp_path / "cache", tmp_path / "ckpt")
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors of Hub repo 'idaa-test/tiny-vae'"):
        load_vae(REPO, cache_dir=tmp_path / "cache", local_files_only=True)


def test_missing_file_in_local_folder(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors.*save_pretrained"):
        load_vae(tmp_path)


def test_not_a_folder_nor_repo_id():
    with pytest.raises(CheckpointError, match=r"'bad name!': no such folder, and not a valid Hub repo id"):
        load_vae("bad name!")


def test_corrupted_safetensors(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file.*re-download"):
        load_vae(tmp_path)


def test_pickle_file_is_refused(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    torch.save(tiny_vae.state_dict(), tmp_path / "model.safetensors")  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_vae(tmp_path)


def test_config_shapes_do_not_match_weights(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["latent_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match its config\.json: shape mismatch.*fc_mu\.weight"):
        load_vae(tmp_path)


def test_unknown_config_key(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["dropout"] = 0.1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown VAE config key\(s\) \['dropout'\]"):
        load_vae(tmp_path)


def test_invalid_config_json(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_vae(tmp_path)


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
    assert_same_model(tiny_vae, load_vae(tmp_path / "uploaded"))
