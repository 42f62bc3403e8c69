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
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")  # what an example writes to a temporary directory
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


EXPORT_FILES = ["m-17-medical.json", "m-17.html", "m-17.json", "m-17.zip"]


def _run_subject_export(cwd: Path, *args: str) -> str:
    script = Path(__file__).parents[2] / "examples" / "subject_export.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTKIT_")}
    (cwd.parent / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(cwd.parent / "tmp")
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_subject_export_example_writes_nothing_into_the_current_directory(
    tmp_path: Path,
) -> None:
    """Its export files (a member's data) go to a temporary directory it names, never into
    the directory it runs in (a run from a checkout once committed them)."""
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    out = _run_subject_export(cwd)
    assert list(cwd.iterdir()) == []
    where = Path(out.rpartition("written into ")[2].partition(":")[0])
    assert where.parent == tmp_path / "tmp"
    assert sorted(p.name for p in where.iterdir()) == EXPORT_FILES


def test_the_subject_export_example_writes_into_a_directory_given(tmp_path: Path) -> None:
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    out = _run_subject_export(cwd, str(tmp_path / "exports"))
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == EXPORT_FILES
    assert f"written into {tmp_path / 'exports'}:" in out
