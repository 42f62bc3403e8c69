"""Repository habits: the version is written once, the licence is the one pyproject declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import vaultkit

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_written_once() -> None:
    """pyproject.toml has no version of its own: setuptools reads vaultkit.__version__."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "vaultkit.__version__"}
    assert vaultkit.__version__.count(".") >= 2


def test_license_file_is_the_apache_license() -> None:
    """LICENSE is the full Apache License 2.0 text, which is what pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text


def test_security_policy_says_how_to_report() -> None:
    """SECURITY.md names a private channel, the supported versions and the scope."""
    text = (ROOT / "SECURITY.md").read_text()
    for heading in ("## Reporting a vulnerability", "## Supported versions", "## In scope"):
        assert heading in text
    assert "Report a vulnerability" in text and "docs/security.md" in text
