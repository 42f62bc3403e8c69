"""The machine block of a run: what the figures were measured on, without naming who ran it."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import vaultkit

__all__ = ["CPU_FLAGS", "config_digest", "differences", "load_average", "machine_block"]

#: The CPU flags that decide AES-GCM, GHASH, SHA-256 and HMAC speed, as /proc/cpuinfo names them.
CPU_FLAGS = ("aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f", "sha_ni")

#: Machine fields whose difference makes two runs incomparable (``--compare`` warns).
COMPARED = (
    "cpu_model",
    "cpu_flags",
    "logical_cores",
    "python",
    "python_implementation",
    "cryptography",
    "openssl",
    "sqlalchemy",
    "os",
)


def _cpuinfo() -> tuple[str | None, list[str], int | None, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None, [], None, False
    model: str | None = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    return model, [f for f in CPU_FLAGS if f in flags], len(cores) or None, "hypervisor" in flags


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _memory_bytes() -> int | None:
    text = _read("/proc/meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _git() -> dict[str, Any]:
    """Commit and dirty flag of the source tree vaultkit runs from, when it is a git checkout."""
    root = Path(vaultkit.__file__).resolve().parents[1]  # the checkout holding the package
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        # git from PATH with fixed arguments; no input reaches the command line.
        commit = subprocess.run(  # noqa: S603
            ["git", "-C", str(root), "rev-parse", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(  # noqa: S603
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_block(*, include_host: bool = False) -> dict[str, Any]:
    """Describe the machine and software of this run.

    Host name and user name are left out unless ``include_host``: a report is meant to be shared.
    """
    import cryptography
    import sqlalchemy
    from cryptography.hazmat.backends.openssl.backend import backend

    import vaultkit

    model, flags, physical, virtual = _cpuinfo()
    block: dict[str, Any] = {
        "cpu_model": model,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "virtualised": virtual,
        "frequency_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "python_compiler": platform.python_compiler(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "database_servers": {},
        "vaultkit": vaultkit.__version__,
        "git": _git(),
        "load_average_before": load_average(),
        "load_average_after": None,
        "executable_prefix": "venv" if sys.prefix != sys.base_prefix else "system",
    }
    if include_host:
        block["hostname"] = socket.gethostname()
        block["user"] = getpass.getuser()
    return block


def differences(base: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Names of the machine fields that differ between two runs (those that change speed)."""
    return [name for name in COMPARED if base.get(name) != now.get(name)]


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of the configuration in canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
