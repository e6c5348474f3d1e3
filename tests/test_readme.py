"""The README's ``python`` code blocks run, in order, as written (``py`` blocks are illustrations needing network)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_blocks_run():
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # The kornia composition left masks and boxes untouched by IDAA (only geometric changes) and changed images.
    assert namespace["views"].shape == (16, 3, 32, 32)
    assert set(namespace["masks"].unique().tolist()) <= {0.0, 1.0}
    assert namespace["hard_views"].shape == (16, 3, 32, 32)


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = ".venv/bin/python -m pytest -q"
    assert test_command in text and test_command in ci
    assert "bash .ci/run" in text
