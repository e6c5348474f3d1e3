"""Under float16 autocast the built-in attack runs in bfloat16 (float32 without bfloat16 support), with autocast's
weight cache off; a user's loss keeps the caller's precision, with a warning; any other setting is left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from idaa_transforms import _precision
from idaa_transforms._precision import FLOAT16_ADVICE, adversary_precision, attack_precision

CPU = torch.device("cpu")


def autocast_state() -> tuple[bool, torch.dtype, bool]:
    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled()


def test_float16_autocast_becomes_bfloat16_without_the_cache_and_comes_back():
    with torch.autocast("cpu", dtype=torch.float16):
        before = autocast_state()
        with attack_precision(CPU):
            assert autocast_state() == (True, torch.bfloat16, False)
        assert autocast_state() == before


def test_the_callers_weight_cache_is_neither_read_nor_changed():
    """Autocast caches the low-precision copies of weights that require grad, keyed by the weight alone: a nested
    bfloat16 autocast with the cache on would read the caller's float16 copies, and leave bfloat16 ones behind."""
    layer = nn.Linear(4, 4)
    x = torch.rand(2, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        assert layer(x).dtype == torch.float16  # the caller's forward fills its cache
        with attack_precision(CPU):
            assert layer(x).dtype == torch.bfloat16
        assert layer(x).dtype == torch.float16  # and the caller's next forward still works


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
        assert autocast_state()[:2] == (True, torch.float16)


def test_a_users_loss_or_a_float16_model_keeps_the_callers_precision_with_a_warning():
    warned: set[str] = set()
    x = torch.rand(2, 3)
    with torch.autocast("cpu", dtype=torch.float16):
        with pytest.warns(UserWarning, match="float16 autocast the attack's gradient is computed in float16"):
            with adversary_precision(x, None, builtin_loss=False, who="T", warned=warned):
                assert autocast_state()[:2] == (True, torch.float16)
        with pytest.warns(UserWarning, match="bfloat16 autocast"):
            with adversary_precision(x, nn.Linear(3, 3).half(), builtin_loss=True, who="U", warned=set()):
                assert autocast_state()[:2] == (True, torch.float16)
        with pytest.warns(UserWarning, match="bfloat16 autocast"):  # a float16 VAE: as the caller has it
            with adversary_precision(x, nn.Linear(3, 3), builtin_loss=True, who="V", warned=set(),
                                     vae=nn.BatchNorm2d(3).half()):
                assert autocast_state()[:2] == (True, torch.float16)
        with adversary_precision(x, nn.Linear(3, 3), builtin_loss=True, who="T", warned=warned, vae=nn.Linear(2, 2)):
            assert autocast_state()[:2] == (True, torch.bfloat16)
    assert "flush to zero" in FLOAT16_ADVICE


def test_bfloat16_support():
    assert _precision._supports_bfloat16("cpu", None)
    assert not _precision._supports_bfloat16("mps", None)  # not assumed: float32 there
