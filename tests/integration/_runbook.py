"""docs/operations.md's ``sh`` blocks, extracted and run as written by the runbook tests.

Only what the runbook's preamble names is substituted: environment variables (``$KEY_STORE_URL``,
``$APP_DB_URL``, ``$AUDIT_URL``) are set by the test to its own databases, ``export
VAULTKIT_MASTER_KEY=...`` lines are skipped (the test sets the master key), and the test passes
any literal placeholder (``/srv/audit-checkpoints``, a DEK id ``3f2a...``) with its replacement.
Each ``vaultkit`` line runs in-process through :func:`vaultkit.cli.main.main`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from vaultkit.cli.main import main

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def _lines(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    lines = [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def sh_blocks() -> list[tuple[str, list[str]]]:
    """Every ``sh`` block of the runbook as (the ``##`` heading it is under, its shell lines with
    continuations joined and comments dropped)."""
    text = RUNBOOK.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        blocks.append((headings[-1], _lines(match.group(1))))
    return blocks


def commands(section: str) -> list[str]:
    """The shell lines of the first ``sh`` block under the heading starting with ``section``."""
    for heading, lines in sh_blocks():
        if heading.startswith(section.removeprefix("## ")):
            return lines
    raise AssertionError(f"no sh block under {section!r} in {RUNBOOK}")


def argv(line: str, replace: Mapping[str, str] | None = None) -> list[str]:
    """The ``vaultkit`` arguments of ``line``: placeholders replaced, then ``$VARIABLES``
    expanded from the environment (an unset one fails the test)."""
    for placeholder, value in (replace or {}).items():
        line = line.replace(placeholder, value)
    words = [os.path.expandvars(word) for word in shlex.split(line)]
    assert words[0] == "vaultkit", line
    assert not any("$" in word for word in words), f"unset variable in {line!r}"
    return words[1:]


def run(line: str, replace: Mapping[str, str] | None = None) -> int | None:
    """Run one runbook line; ``None`` for an ``export VAULTKIT_MASTER_KEY=...`` line (the test
    has set the master key), else the exit code."""
    if line.startswith("export "):
        assert line.split("=", 1)[0] == "export VAULTKIT_MASTER_KEY", line
        return None
    return main(argv(line, replace))


def app_package(root: Path, models: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runbook's ``myapp.models`` (source ``models``) under ``root``, importable; a
    ``myapp`` another test imported before is forgotten."""
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "models.py").write_text(models)
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "myapp" or n.startswith("myapp.")]:
        monkeypatch.delitem(sys.modules, name)
