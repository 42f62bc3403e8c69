"""Two processes encrypting at once against one keyring and one key store."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaultkit import Vault
from vaultkit.keys import LocalKeyProvider

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
