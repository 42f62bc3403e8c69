"""tests/_servers.py, as .ci/run uses it: a server that cannot start fails the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_server_binary_exits_1_with_the_reason(tmp_path: Path) -> None:
    """``python -m tests._servers openbao`` with no bao binary prints no variable and exits 1
    (CI then fails instead of skipping the OpenBao tests)."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "tests._servers", "openbao"),
            *("--bao", str(tmp_path / "no-bao"), "--log", str(tmp_path / "bao.log")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "openbao did not start" in result.stderr
