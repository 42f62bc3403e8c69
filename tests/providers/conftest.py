"""Real key servers for the provider tests: SoftHSM2, an OpenBao dev server, moto's KMS emulator.

Each fixture uses the server `.ci/run` started (its address in the environment), or starts one
itself (on 127.0.0.1, a free port, a temporary directory; the helpers are in ``tests/_servers.py``)
and skips the tests when the server cannot be had, unless VAULTKIT_REQUIRE_<NAME>=1 (as in CI),
which turns the skip into a failure. Test modules import helpers from ``tests._servers``, never
from here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._servers import (
    SOFTHSM_LIBRARY,
    Server,
    SoftHSM,
    start_moto,
    start_openbao,
    started,
    unavailable,
    wait_for,
)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """A SoftHSM2 token initialised in a temporary directory (SOFTHSM2_CONF points at it)."""
    util = shutil.which("softhsm2-util")
    if util is None or not Path(SOFTHSM_LIBRARY).exists():
        unavailable("SOFTHSM", "SoftHSM2 is not installed (Debian package softhsm2)")
    try:
        import PyKCS11  # noqa: F401
    except ImportError:
        unavailable("SOFTHSM", "PyKCS11 is not installed")
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


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One OpenBao dev server for the session: the one `.ci/run` started (VAULTKIT_TEST_OPENBAO_ADDR
    and VAULTKIT_TEST_OPENBAO_TOKEN), else one of its own."""
    try:
        import hvac
    except ImportError:
        unavailable("OPENBAO", "hvac is not installed")
    address = os.environ.get("VAULTKIT_TEST_OPENBAO_ADDR")
    token = os.environ.get("VAULTKIT_TEST_OPENBAO_TOKEN")
    if address and token:
        if not wait_for(f"{address}/v1/sys/health", 30):
            unavailable("OPENBAO", f"no OpenBao server answers at {address}")
        client = hvac.Client(url=address, token=token)
        if "transit/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("transit", path="transit")
        yield Server(address, token, None)
        return
    server = started(start_openbao, tmp_path_factory.mktemp("openbao") / "bao.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def aws_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One moto server for the session (the one `.ci/run` started, VAULTKIT_TEST_KMS_ENDPOINT, else
    one of its own), with fake credentials in the environment."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("AWS_EMULATOR", "boto3 or moto[server] is not installed")
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
            unavailable("AWS_EMULATOR", f"no KMS emulator answers at {address}")
        server = Server(address, "", None)
    else:
        server = started(start_moto, tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
