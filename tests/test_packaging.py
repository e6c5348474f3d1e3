"""The installable package declares every subpackage and ships the default checkpoint."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_declared_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = set(cfg["options"]["packages"].split())
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "idaa_transforms").rglob("__init__.py")
    }
    assert on_disk <= declared, f"missing from setup.cfg [options] packages: {sorted(on_disk - declared)}"
    assert "idaa_transforms._weights" in declared and "weights" in cfg["options"]["package_dir"]


def test_shipped_checkpoint_files_are_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg["options.package_data"]["idaa_transforms._weights"]
    for name in ("config.json", "model.safetensors", "README.md"):
        assert f"*/{name}" in patterns
        assert any((ROOT / "weights").glob(f"*/{name}"))
