"""The adversaries' passes under float16 autocast run in bfloat16 (or float32 without bfloat16 support); any other
setting is left as the caller has it."""

from __future__ import annotations

import pytest
import torch

from idaa_transforms import _precision
from idaa_transforms._precision import attack_precision

CPU = torch.device("cpu")


def autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")


def test_float16_autocast_becomes_bfloat16_and_comes_back():
    with torch.autocast("cpu", dtype=torch.float16):
        with attack_precision(CPU):
            assert autocast_state() == (True, torch.bfloat16)
        assert autocast_state() == (True, torch.float16)


def test_without_bfloat16_the_passes_run_in_float32(monkeypatch):
    monkeypatch.setattr(_precision, "_supports_bfloat16", lambda kind, index: False)
    with torch.autocast("cpu", dtype=torch.float16), attack_precision(CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_other_settings_are_untouched(dtype):
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        before = autocast_state()
        with attack_precision(CPU):
            assert autocast_state() == before


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_float16_autocast_on_another_device_leaves_the_cpu_alone(device):
    with torch.autocast("cpu", dtype=torch.float16), attack_precision(torch.device(device)):
        assert autocast_state() == (True, torch.float16)


def test_bfloat16_support():
    assert _precision._supports_bfloat16("cpu", None)
    assert not _precision._supports_bfloat16("mps", None)  # not assumed: float32 there
