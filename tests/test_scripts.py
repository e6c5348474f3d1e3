"""scripts/: the CIFAR-10 pack and the GPU session, run on the CPU with a tiny generated CIFAR-10 in class folders.

The session's compare stage is the path by which results cross machines: its parts come back, put together they hold
every finished run without checkpoints, and a later session given them as kept runs reads them instead of retraining.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import write_class_folders
from idaa_transforms._cifar import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parents[1]
TINY_COMPARE = ("--epochs 1 --seeds 0 --batch-size 16 --arch small_cnn --variants idaa --no-equal-time --no-anchors "
                "--calibration-images 8 --probe-steps 5 --knn-k 5")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xz") is None,
                                reason="the scripts need bash and xz")


def script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def session(tmp_path: Path, name: str, **settings: str) -> Path:
    """One compare-only session on the CPU; returns its $OUT."""
    out = tmp_path / name
    done = script("gpu_session.sh", env={
        "OUT": str(out), "STAGES": "compare", "DEVICE": "cpu", "AMP": "", "PYTHON": sys.executable,
        "SESSION_SECONDS": "240", "DATA_DIR": str(tmp_path / "data"), "COMPARE_ARGS": TINY_COMPARE,
        "PART_BYTES": "40000", **settings})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def unpack_parts(out: Path, into: Path) -> Path:
    parts = sorted(out.glob("session-*.tar.gz"))
    joined = into.with_suffix(".tar.gz")
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.fixture(scope="module")
def cifar_pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    write_class_folders(folder / "src", CIFAR10_CLASSES, per_class=8)
    pack = folder / "cifar10.tar.xz"
    done = script("pack_cifar10.sh", str(folder / "src"), str(pack))
    assert done.returncode == 0, done.stderr
    assert "160 files" in done.stdout and not list(folder.glob("*.partial.*"))
    return pack


def test_pack_refuses_to_replace_a_pack_or_to_pack_another_layout(cifar_pack, tmp_path):
    again = script("pack_cifar10.sh", str(tmp_path), str(cifar_pack))
    assert again.returncode == 2 and "train is not a folder" in again.stderr
    (tmp_path / "train").mkdir(), (tmp_path / "test").mkdir()
    again = script("pack_cifar10.sh", str(tmp_path), str(cifar_pack))
    assert again.returncode == 2 and "exists; remove it first" in again.stderr


def test_session_results_come_back_in_parts_and_a_later_session_reads_them(cifar_pack, tmp_path):
    first = session(tmp_path, "out1", DATA_PACK=str(cifar_pack), COMPARE_OUT=str(tmp_path / "compare1"),
                    KEPT_RUNS=str(tmp_path / "none"))
    log = (first / "session.log").read_text()
    assert "unpacked" in log and "compare: exit status 0" in log
    parts = sorted(first.glob("session-*.tar.gz"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 40000 for p in parts)  # split as asked
    back = unpack_parts(first, tmp_path / "back")
    runs = {p.parent.name for p in back.glob("compare/*/results.json")}
    assert runs == {"baseline-e1-s0", "idaa-e1-s0"} and (back / "compare" / "report.md").is_file()
    assert not list(back.rglob("checkpoint.pt"))  # what cannot come back is left out
    assert (tmp_path / "compare1" / "idaa-e1-s0" / "checkpoint.pt").is_file()

    # A later session on another machine: the finished runs come from the repository, nothing is trained again.
    second = session(tmp_path, "out2", COMPARE_OUT=str(tmp_path / "compare2"), KEPT_RUNS=str(back / "compare"))
    assert "compare: exit status 0" in (second / "session.log").read_text()
    for run in runs:
        assert not (tmp_path / "compare2" / run / "checkpoint.pt").exists(), run
        assert ((tmp_path / "compare2" / run / "results.json").read_bytes()
                == (back / "compare" / run / "results.json").read_bytes())


def test_an_unknown_stage_is_named_and_skipped(tmp_path):
    out = tmp_path / "out"
    done = script("gpu_session.sh", env={"OUT": str(out), "STAGES": "bench-typo", "PYTHON": sys.executable,
                                         "DATA_DIR": str(tmp_path / "data"), "DATA_PACK": str(tmp_path / "none")})
    assert done.returncode == 0
    log = (out / "session.log").read_text()
    assert "unknown stage 'bench-typo'" in log and "need CIFAR-10" in log


def test_the_vae_stage_sizes_its_schedule_by_a_probe_and_brings_the_vae_back(cifar_pack, tmp_path):
    out = tmp_path / "out"
    done = script("gpu_session.sh", env={
        "OUT": str(out), "STAGES": "vae", "DEVICE": "cpu", "AMP": "", "PYTHON": sys.executable,
        "SESSION_SECONDS": "240", "DATA_DIR": str(tmp_path / "data"), "DATA_PACK": str(cifar_pack),
        "VAE_OUT": str(tmp_path / "vae"), "VAE_MINUTES": "1",
        "VAE_ARGS": "--width 16 --latent-dim 8 --batch-size 16 --subset 40"})
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "session.log").read_text()
    # a one-minute budget over CIFAR-10's 50,000 images: one epoch, which ends the schedule
    assert "vae: 1 epochs" in log and "vae: exit status 0" in log and "epochs, " in log and "colour kept" in log
    back = unpack_parts(out, tmp_path / "back")
    names = {p.name for p in (back / "vae").iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "held_out.json"} <= names
    assert "trainer_state.pt" not in names and "epochs: 1 of 1" in (back / "vae" / "README.md").read_text()


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_kept_evidence_runs_can_be_committed_while_scratch_runs_cannot():
    """The session commits its finished runs to docs/evidence/*/runs/; a pattern ignoring every folder named runs/
    would drop them from the commit (and from what travels to the GPU machine) without a word."""
    paths = ["docs/evidence/cifar10-gpu/runs/idaa-s0-e20/results.json", "runs/compare/report.md",
             "docs/evidence/cifar10-gpu/runs/idaa-s0-e20/checkpoint.pt"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == paths[1:]
