"""The trainers' command line: built from TrainConfig, bad values refused at parse time, one-line errors, exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_RUN
from idaa_transforms.trainers.cli import build_parser, main, parse_args


def test_cli_defaults_and_derived_output_folder():
    cfg = parse_args([])
    assert (cfg.dataset, cfg.arch, cfg.method, cfg.idaa) == ("cifar10", "resnet18", "simclr", True)
    assert cfg.out == "runs/simclr-idaa"
    base = parse_args(["--no-idaa", "--method", "byol", "--dataset", "photos", "--no-dual-bn"])
    assert (base.idaa, base.method, base.dataset, base.dual_bn) == (False, "byol", "photos", False)
    assert base.out == "runs/byol"
    assert parse_args(["--subset", "500", "--overwrite"]).subset == 500


def test_help_lists_the_options_and_each_default_once():
    text = re.sub(r"\s+", " ", build_parser().format_help())
    for option in ("--dataset", "--data-dir", "--epochs", "--batch-size", "--arch", "--vae", "--eps", "--alpha",
                   "--no-idaa", "--amp", "--device", "--seed", "--out", "--resume", "--overwrite", "--subset",
                   "--method", "--save-every", "--no-progress", "--temperature", "--attack-steps",
                   "photos", "small_cnn", "any image type"):
        assert option in text, option
    assert "--epochs EPOCHS default: 200" in text and "--lr LR default: 0.0003" in text
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    assert not re.search(r"default: [^()]*\) \(default:", text)


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], "--epochs: expected a positive integer, got '0'"),
    (["--lr", "inf"], "--lr: expected a finite number > 0, got 'inf'"),
    (["--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
    (["--eps", "inf"], "--eps: expected a finite number >= 0, got 'inf'"),
    (["--eps", "-0.1"], "--eps: expected a finite number >= 0"),
    (["--alpha", "nan"], "--alpha: expected a finite number >= 0"),
    (["--weight-decay", "-1"], "--weight-decay: expected a finite number >= 0"),
    (["--device", "tpu"], "--device: expected one of cpu, cuda, mps (or cuda:N), got 'tpu'"),
    (["--batch-size", "1"], "--batch-size: expected at least 2"),
    (["--pixel-eps", "5"], "--pixel-eps: expected a number in [0, 1], got 5.0 (see --help)"),
    (["--byol-momentum", "2"], "--byol-momentum: expected a number in"),
    (["--epoch", "3"], "unrecognized arguments: --epoch"),  # no prefix matching (allow_abbrev=False)
    (["--resume", "--overwrite"], "give one of them"),
])
def test_bad_values_are_refused_at_parse_time(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_main_returns_zero_and_prints_the_summary_without_progress(tmp_path, capsys):
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items() if k != "no_progress"]
    assert main([*argv, "--no-progress", "--no-idaa", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "kNN accuracy" in out and "linear accuracy" in out and out.count("\n") == 1


def test_a_run_stopped_early_exits_3_and_its_resume_0(tmp_path):
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items() if k not in ("no_progress", "epochs")]
    argv += ["--no-progress", "--no-idaa", "--epochs", "2", "--out", str(tmp_path / "run")]
    assert main([*argv, "--stop-after", "1"]) == 3
    assert main([*argv, "--resume"]) == 0


def test_run_problems_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items() if k != "no_progress"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    # The trainer's own refusals name flags too.
    assert main([*argv, "--no-progress", "--batch-size", "4096", "--out", str(tmp_path / "big")]) == 2
    assert "--batch-size: 4096 is larger than the training set" in capsys.readouterr().err
    # Data that is not there: one line, and no empty --out left behind.
    assert main([*argv, "--no-progress", "--dataset", "cifar10", "--data-dir", str(tmp_path / "no-data"),
                 "--out", str(tmp_path / "runs" / "cifar")]) == 2
    assert "no local copy" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_console_script_entry_point_exits_zero(tmp_path):
    """``idaa-train`` runs ``sys.exit(main())``: a successful run must exit with status 0 (not print a value)."""
    code = ("import sys; from idaa_transforms.trainers.cli import main; "
            f"sys.exit(main(['--dataset', 'photos', '--arch', 'small_cnn', '--crops-per-photo', '16', "
            f"'--batch-size', '32', '--epochs', '1', '--probe-steps', '5', '--device', 'cpu', '--no-idaa', "
            f"'--no-progress', '--out', {str(tmp_path / 'run')!r}]))")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout, not an installed copy
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "" or "Traceback" not in proc.stderr


def test_setup_cfg_declares_the_console_script():
    text = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "idaa-train = idaa_transforms.trainers.cli:main" in text


def test_a_bad_command_line_is_one_line_not_the_usage_block(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--lr", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert "--lr: expected a finite number > 0, got 'abc' (see --help)" in err


def test_ctrl_c_ends_a_run_with_one_line_that_says_how_to_continue(tmp_path):
    """A real SIGINT to a training process: status 130 and one line, no traceback."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items() if k not in ("no_progress", "epochs")]
    out = tmp_path / "run"
    command = [sys.executable, "-m", "idaa_transforms.trainers", *argv, "--no-progress", "--no-idaa", "--epochs",
               "1000", "--save-every", "1", "--out", str(out)]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    # A shell's background job (CI's, for one) ignores SIGINT, and Python keeps an ignored SIGINT ignored: the child
    # gets the default disposition back, as in a terminal.
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.count("\n") == 1 and err.endswith(
        f": interrupted; the same command with --resume continues from the last checkpoint in {out}\n")
