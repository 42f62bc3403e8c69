"""Two processes against one keyring and one key store: encrypting at once, and a DEK destroyed or
retired by one that the other stops using within the check interval."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaultkit import Vault
from vaultkit.errors import DecryptionError
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import DekState

WORKER = Path(__file__).with_name("_worker.py")
MASTER = os.urandom(32)
COUNT = 400


def run_two_writers(tmp_path: Path, url: str) -> None:
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring, master_key=MASTER).primary("medical")
    env = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(keyring),
                url,
                str(tmp_path / f"out-{label}"),
                str(COUNT),
                label,
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for label in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]

    deks: dict[str, set[bytes]] = {}
    with Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=url,
        domains=["identity", "medical"],
    ) as vault:
        for label in ("a", "b"):
            blobs = [
                bytes.fromhex(line) for line in (tmp_path / f"out-{label}").read_text().split()
            ]
            assert len(blobs) == COUNT
            for i, blob in enumerate(blobs):
                assert (
                    vault.decrypt(blob, context={"table": "t", "column": "c", "row": i})
                    == f"{label}-{i}"
                )
            deks[label] = {b[4:20] for b in blobs}
        records = list(vault.store.records(domain="medical"))
    # Each process took its own DEKs (4 each at 100 encryptions per DEK) and never shared one.
    assert len(deks["a"]) == len(deks["b"]) == COUNT // 100
    assert not deks["a"] & deks["b"]
    assert len(records) == 2 * COUNT // 100
    assert sum(r.encryptions for r in records) == 2 * COUNT


@pytest.mark.slow
def test_two_processes_on_sqlite(tmp_path: Path) -> None:
    """Two processes writing at once into one SQLite key store each use their own DEKs."""
    run_two_writers(tmp_path, f"sqlite:///{tmp_path / 'app.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Two processes writing at once into one PostgreSQL key store each use their own DEKs."""
    run_two_writers(tmp_path, postgres_url)


READER = Path(__file__).with_name("_reader.py")
#: The documented bound (Vault's default key_check_interval) and the slack the test allows for
#: process scheduling and the store's round trips on a loaded machine.
CHECK_INTERVAL = 5.0
SLACK = 3.0


def start_reader(
    tmp_path: Path, url: str, keyring: Path, mode: str, blob: bytes
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a reader process; return it and its out directory once it is using its key."""
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


def wait_done(proc: subprocess.Popen[bytes], out: Path, since: float) -> float:
    """Seconds from ``since`` (wall time) until the reader saw the change; fails on timeout."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, f"still using the key after 30 s: {err.decode()[-2000:]}"
    when, _uses = (out / "done").read_text().split()
    return float(when) - since


@pytest.mark.slow
@pytest.mark.postgres
def test_a_dek_destroyed_in_one_process_stops_decrypting_in_another(
    tmp_path: Path, postgres_url: str
) -> None:
    """Process B decrypts a value; A destroys its DEK; B fails within the check interval."""
    keyring = tmp_path / "keyring.json"
    ctx = {"table": "t", "column": "c", "row": 1}
    with Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=postgres_url,
        domains=["identity", "medical"],
    ) as a:
        blob = a.encrypt("secret", domain="medical", context=ctx)
        a.retire_dek(blob[4:20])
        reader, out = start_reader(tmp_path, postgres_url, keyring, "decrypt", blob)
        a.destroy_dek(blob[4:20], references=0)
        destroyed = time.time()
        elapsed = wait_done(reader, out, destroyed)
        with pytest.raises(DecryptionError):
            a.decrypt(blob, context=ctx)
    print(f"\nB stopped decrypting {elapsed:.2f} s after A destroyed the DEK")
    assert 0 <= elapsed <= CHECK_INTERVAL + SLACK


@pytest.mark.slow
@pytest.mark.postgres
def test_a_dek_retired_in_one_process_stops_encrypting_in_another(
    tmp_path: Path, postgres_url: str
) -> None:
    """Process B encrypts; A retires B's DEK; B takes a fresh DEK within the check interval."""
    keyring = tmp_path / "keyring.json"
    LocalKeyProvider(keyring, master_key=MASTER).primary("medical")
    reader, out = start_reader(tmp_path, postgres_url, keyring, "encrypt", b"")
    dek = bytes.fromhex((out / "ready").read_text())
    with Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=postgres_url,
        domains=["identity", "medical"],
    ) as a:
        a.retire_dek(dek)
        retired = time.time()
        elapsed = wait_done(reader, out, retired)
        assert a.dek_state(dek) is DekState.RETIRED
    print(f"\nB stopped encrypting under the DEK {elapsed:.2f} s after A retired it")
    assert 0 <= elapsed <= CHECK_INTERVAL + SLACK
