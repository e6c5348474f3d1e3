"""examples/lightly_simclr.py: IDAA inside lightly's SimCLR recipe, on a few generated images (when lightly is installed)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("lightly")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightly_simclr.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("lightly_simclr", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trains_on_generated_images(example, single_thread, capsys):
    losses = example.main(["--fake", "16", "--epochs", "1", "--batch-size", "8"])
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "2 steps, loss" in capsys.readouterr().out


def test_batch_larger_than_the_data_is_refused(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--fake", "4", "--batch-size", "8"])
    assert "larger than the 4 images" in capsys.readouterr().err
