"""Two processes and a subject-scoped domain: a subject erased in one process (fenced, its keys
destroyed) stops decrypting, and stops being written, in the other within the check interval."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaultkit import KeyDomain, Vault
from vaultkit.errors import SubjectErasedError
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import SubjectRecord

READER = Path(__file__).with_name("_scoped_reader.py")
MASTER = os.urandom(32)
DOMAINS = [KeyDomain("contract", dek_scope="subject")]
CHECK_INTERVAL = 5.0  # the documented bound (Vault's default key_check_interval)
SLACK = 3.0  # process scheduling and store round trips on a loaded machine


def start(
    tmp_path: Path, url: str, keyring: Path, mode: str, blob: bytes
) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / f"reader-{mode}"
    out.mkdir()
    env = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
    proc = subprocess.Popen(
        [sys.executable, str(READER), mode, str(keyring), url, blob.hex(), str(out), "30"],
        env=env,
        stderr=subprocess.PIPE,
    )
    give_up = time.monotonic() + 60
    while not (out / "ready").exists():
        if proc.poll() is not None or time.monotonic() > give_up:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the reader did not start: {err.decode()[-2000:]}")
        time.sleep(0.01)
    return proc, out


def finish(proc: subprocess.Popen[bytes], out: Path, since: float) -> tuple[float, str]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, f"still using the key after 30 s: {err.decode()[-2000:]}"
    when, _uses, error = (out / "done").read_text().split()
    return float(when) - since, error


def erase(vault: Vault, subject: str) -> None:
    """What ``erase_subject`` does to the key store, in its order: fence, then destroy."""
    store = vault._scoped_store()
    ref = vault.subject_ref("contract", subject)
    now = dt.datetime.now(dt.UTC)
    store.put_subject(SubjectRecord("contract", ref, fenced_at=now, erased_at=now))
    for record in store.subject_keys("contract", ref):
        store.destroy_key(record.dek_id, reason="erasure", at=now)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["decrypt", "encrypt"])
def test_a_subject_erased_in_one_process_is_refused_in_another(
    tmp_path: Path, url: str, mode: str
) -> None:
    keyring = tmp_path / "keyring.json"
    with Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER), store=url, domains=DOMAINS
    ) as a:
        blob = a.encrypt("claim 1", domain="contract", subject="m-17")
        reader, out = start(tmp_path, url, keyring, mode, blob)
        erase(a, "m-17")
        erased = time.time()
        elapsed, error = finish(reader, out, erased)
        with pytest.raises(SubjectErasedError):
            a.decrypt(blob)
    print(f"\nB stopped ({mode}) {elapsed:.2f} s after A erased the subject: {error}")
    assert error == "SubjectErasedError"
    assert 0 <= elapsed <= CHECK_INTERVAL + SLACK


UPGRADER = """
import sys, time
from pathlib import Path
from vaultkit.store import SQLKeyStore
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
SQLKeyStore(sys.argv[1]).close()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_processes_upgrading_a_v1_store_at_once_all_succeed(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Three processes open one layout version 1 store at the same moment: each upgrades or finds
    it upgraded, none fails, and the store ends at version 2 with every new column."""
    from tests.unit.store.test_layout_v2 import V2_COLUMNS, layout, make_v1

    url = (
        f"sqlite:///{tmp_path / 'keys.db'}"
        if kind == "sqlite"
        else str(request.getfixturevalue(f"{kind}_url"))
    )
    make_v1(url)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADER, url, str(go)],
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        for _ in range(3)
    ]
    time.sleep(1.0)  # all started and waiting
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    version, columns, tables = layout(url)
    assert version == "2" and V2_COLUMNS <= columns and "vaultkit_subjects" in tables
