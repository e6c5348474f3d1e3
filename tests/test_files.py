"""Run files: state files read with ``weights_only=True`` and refused in one line when they are not what they should
be, no empty run folder left by a failed start, and one run at a time in a folder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

from idaa_transforms import _files
from idaa_transforms._files import atomic_torch_save, load_torch_state


def test_a_state_file_round_trips(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"epoch": 3, "weights": torch.arange(4.0)}, path)
    state = load_torch_state(path, required=("epoch", "weights"))
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left


def test_bytes_that_are_no_torch_file_get_a_readable_reason(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("hello world, no tensors here")
    with pytest.raises(ValueError) as err:
        load_torch_state(path)
    message = str(err.value)
    assert "state.pt is not a readable training state (it is not a file written by torch.save)" in message
    assert len(message.splitlines()) == 1


def test_a_state_without_the_required_keys_is_another_programs_file(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"model": {}}, path)
    with pytest.raises(ValueError, match=r"is not a checkpoint of these trainers \(it lacks epoch\)"):
        load_torch_state(path, required=("model", "epoch"), kind="checkpoint of these trainers")


def test_a_failed_block_removes_only_the_empty_folders_it_created(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with _files.removed_if_left_empty(tmp_path / "kept" / "new" / "run"):
            (tmp_path / "kept" / "new" / "run").mkdir(parents=True)
            raise ValueError("the data is missing")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()
    with pytest.raises(ValueError):  # a folder that holds a file is never removed
        with _files.removed_if_left_empty(tmp_path / "busy"):
            (tmp_path / "busy").mkdir()
            (tmp_path / "busy" / "metrics.jsonl").write_text("{}")
            raise ValueError("interrupted")
    assert (tmp_path / "busy" / "metrics.jsonl").is_file()
    with _files.removed_if_left_empty(tmp_path / "ok"):  # no error: the folder stays, even empty
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()


def test_a_claimed_folder_refuses_a_second_run_until_the_first_ends(tmp_path):
    with _files.claim_folder(tmp_path / "run") as folder:
        assert folder == tmp_path / "run" and folder.is_dir()
        with pytest.raises(ValueError) as err:
            with _files.claim_folder(tmp_path / "run", flag="--out"):
                raise AssertionError("a second claim must not enter its block")
        message = str(err.value)
        assert message.startswith(f"--out: {tmp_path / 'run'} is in use by another run (process {os.getpid()} on ")
        assert message.endswith("wait for it to end, or choose another --out.") and len(message.splitlines()) == 1
    with _files.claim_folder(tmp_path / "run"):  # free again once the block is over
        pass
    assert list((tmp_path / "run").iterdir()) == []  # and the lock file is gone


def test_a_killed_holder_leaves_no_stale_claim(tmp_path):
    code = "import os, sys\nfrom idaa_transforms import _files\nwith _files.claim_folder(sys.argv[1]):\n    os._exit(9)"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert (tmp_path / "run" / _files.LOCK_FILE).is_file()  # a kill leaves the file...
    with _files.claim_folder(tmp_path / "run"):  # ...but not the lock
        pass


def test_a_file_cannot_be_claimed(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="--vae-out: .*a-file is a file, not a folder"):
        with _files.claim_folder(tmp_path / "a-file", flag="--vae-out"):
            pass
    with pytest.raises(ValueError, match="--out: cannot write to .*a-file/run"):
        with _files.claim_folder(tmp_path / "a-file" / "run"):
            pass


@pytest.mark.parametrize("kind", list(_files.FOLDER_KINDS))
def test_a_folder_of_another_kind_of_run_is_refused_whatever_the_flags(tmp_path, kind):
    for holder, names in _files.FOLDER_KINDS.items():
        folder = tmp_path / holder.replace(" ", "-")
        folder.mkdir()
        (folder / names[-1]).write_text("")
        if holder == kind:
            _files.prepare_run_dir(folder, kind=kind, resume=True, overwrite=False, markers=names)
            continue
        for resume, overwrite in [(False, False), (True, False), (False, True)]:
            with pytest.raises(ValueError, match=f"--out: .* holds {holder} \\({names[-1]}\\), not {kind}; "
                                                 f"choose another --out"):
                _files.prepare_run_dir(folder, kind=kind, resume=resume, overwrite=overwrite, markers=names)
        assert [p.name for p in folder.iterdir()] == [names[-1]]


def test_the_kinds_of_run_folder_name_the_files_their_tools_write():
    from idaa_transforms import train_vae
    from idaa_transforms.experiments import compare
    from idaa_transforms.trainers import engine

    assert set(_files.FOLDER_KINDS[_files.SSL_RUN]) == {engine.CHECKPOINT, engine.RESULTS}
    assert set(_files.FOLDER_KINDS[_files.VAE_RUN]) <= set(train_vae.RUN_FILES)
    assert _files.FOLDER_KINDS[_files.COMPARISON] == (compare.CALLS,)
    everyone = [name for names in _files.FOLDER_KINDS.values() for name in names]
    assert len(everyone) == len(set(everyone))  # each names one kind


def test_a_file_system_that_cannot_lock_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock files .*nothing stops a second run"):
        with _files.claim_folder(tmp_path / "run") as folder:
            assert folder.is_dir()


def test_a_claim_removes_a_killed_writers_temporary_files(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".checkpoint.pt.12345.tmp").write_bytes(b"half a checkpoint")
    (folder / "notes.tmp").write_text("the user's")  # not a name atomic_write_bytes gives
    _files.atomic_write_text(folder / "metrics.jsonl", "{}\n")
    with _files.claim_folder(folder):
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "metrics.jsonl", "notes.tmp"]
