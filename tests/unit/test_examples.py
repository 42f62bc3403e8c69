"""Smoke test: every script in examples/ runs and exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """The example exits with status 0 in a clean working directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTKIT_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_there_are_examples() -> None:
    """The examples directory is not empty, so the smoke test means something."""
    assert EXAMPLES
