"""Erasure and retention across real processes: a retention sweep killed mid-run resumes; a
process writing for a subject while another erases them is fenced and keeps no key; threads
doing the same in one process."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration._lifecycle_worker import DOMAINS
from vaultkit import Vault
from vaultkit.errors import SubjectErasedError, ValueErasedError
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import WRAPPING_KEK_ID, DekState, SupportsScopedKeys

WORKER = Path(__file__).with_name("_lifecycle_worker.py")
MASTER = os.urandom(32)
ENV = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
KEYS = 600
#: Keys per batch of the killed sweep: one, so that each key costs a transaction and an audit
#: write whether or not the store destroys a batch at once, and the kill lands mid-run.
KILL_BATCH = 1


def make_keyring(tmp_path: Path) -> Path:
    keyring = tmp_path / "keyring.json"
    provider = LocalKeyProvider(keyring, master_key=MASTER)
    for domain in ("identity", "medical", "chat"):
        provider.primary(domain)
    return keyring


def open_vault(keyring: Path, url: str, **options: object) -> Vault:
    return Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=url,
        domains=DOMAINS,
        **options,  # type: ignore[arg-type]
    )


def plant_buckets(url: str, count: int) -> None:
    """``count`` bucket-key rows of domain chat, one per hour from T0, in one transaction."""
    engine = sa.create_engine(url)
    keys = sa.Table("vaultkit_data_keys", sa.MetaData(), autoload_with=engine)
    rows = []
    for i in range(count):
        end = T0 + (i + 1) * HOUR
        rows.append(
            {
                "dek_id": os.urandom(16).hex(),
                "domain": "chat",
                "purpose": "data",
                "kek_id": WRAPPING_KEK_ID,
                "kek_version": 1,
                "wrapped": os.urandom(60),
                "state": "active",
                "created_at": end - HOUR,
                "encryptions": 0,
                "scope": "bucket",
                "not_after": end,
                "destroy_at": end + dt.timedelta(hours=72),
            }
        )
    with engine.begin() as conn:
        conn.execute(keys.insert(), rows)
    engine.dispose()


def count_destroyed(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM vaultkit_data_keys "
                        "WHERE domain = 'chat' AND state = 'destroyed'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def run_enforce(keyring: Path, url: str, at: dt.datetime, batch: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(WORKER), "enforce", str(keyring), url, at.isoformat(), str(batch)],
        env=ENV,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_sweep_killed_mid_run_resumes_and_stays_audited(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path)
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with open_vault(keyring, url) as vault:
        vault.flush_audit()  # creates the key store and the audit log
    plant_buckets(url, KEYS)
    at = T0 + (KEYS + 80) * HOUR  # every bucket is due
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "enforce",
            str(keyring),
            url,
            at.isoformat(),
            str(KILL_BATCH),
        ],
        env=ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    give_up = time.monotonic() + 120
    while count_destroyed(url) < 100:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < give_up
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    killed_at = count_destroyed(url)
    print(f"\nkilled after {killed_at} of {KEYS} keys")
    assert 100 <= killed_at < KEYS, "the sweep finished before it was killed: use more keys"
    with open_vault(keyring, url) as vault:
        log_ = vault.audit_log
        assert log_ is not None
        assert log_.verify().ok
        audited = sum(e.count for _s, e, _p, _m in log_.read() if e.action == "retention")
        # Every destroyed key's batch was audited first (the killed batch may be part-done).
        assert killed_at <= audited <= killed_at + KILL_BATCH
    report = run_enforce(keyring, url, at, 25)
    assert report["keys_destroyed"] == KEYS - killed_at
    assert count_destroyed(url) == KEYS
    assert run_enforce(keyring, url, at, 25)["keys_destroyed"] == 0
    with open_vault(keyring, url) as vault:
        log_ = vault.audit_log
        assert log_ is not None
        result = log_.verify()
        assert result.ok, result.reason
        audited = sum(e.count for _s, e, _p, _m in log_.read() if e.action == "retention")
        assert KEYS <= audited <= KEYS + KILL_BATCH
        store = vault.store
        assert isinstance(store, SupportsScopedKeys)
        assert store.due_keys(at, limit=10) == []
        assert all(r.destroy_reason == "retention" for r in vault.data_keys(domain="chat"))


def read_blobs(out: Path) -> list[tuple[int, bytes]]:
    lines = (out / "blobs").read_text().split("\n")
    return [(int(n), bytes.fromhex(h)) for n, h in (line.split() for line in lines if line)]


def assert_erased(vault: Vault, blobs: list[tuple[int, bytes]]) -> None:
    for i, blob in blobs:
        with pytest.raises(ValueErasedError):
            vault.decrypt(blob, context={"table": "notes", "column": "body", "row": i})


CHECK = 0.5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.slow
def test_a_process_writing_for_a_subject_being_erased_is_fenced_and_keeps_no_key(
    tmp_path: Path, store_url: str
) -> None:
    keyring = make_keyring(tmp_path)
    url = store_url
    with open_vault(keyring, url) as vault:
        vault.flush_audit()
    out = tmp_path / "writer"
    out.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "write",
            str(keyring),
            url,
            "m-17",
            str(out),
            "60",
            str(CHECK),
        ],
        env=ENV,
        stderr=subprocess.PIPE,
    )
    give_up = time.monotonic() + 60
    while not (out / "ready").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < give_up
        time.sleep(0.01)
    time.sleep(0.3)  # the writer is encrypting under its subject key
    with open_vault(keyring, url, key_check_interval=CHECK) as vault:
        receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-1")
        erased = time.time()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"never fenced: {err.decode()[-2000:]}"
        fenced_after = float((out / "fenced").read_text()) - erased
        assert receipt.status == "granted"
        medical = receipt.domains[0]
        assert medical.keys_destroyed >= 1
        blobs = read_blobs(out)
        assert len(blobs) > 10
        # Every value the writer made, before and during the erasure and until it was fenced,
        # is unreadable: its key did not survive.
        assert_erased(vault, blobs)
        store = vault.store
        assert isinstance(store, SupportsScopedKeys)
        keys = store.subject_keys("medical", vault.subject_ref("medical", "m-17"))
        assert keys and all(k.state is DekState.DESTROYED for k in keys)
    print(f"\nthe writer was fenced {fenced_after:.2f} s after the erasure returned")
    assert fenced_after <= CHECK + 3.0


def test_threads_writing_for_a_subject_being_erased_are_fenced(tmp_path: Path) -> None:
    keyring = make_keyring(tmp_path)
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with open_vault(keyring, url) as vault:
        made: list[tuple[int, bytes]] = []
        after: list[BaseException | None] = []
        started = threading.Barrier(5)
        erased = threading.Event()
        lock = threading.Lock()

        def writer(n: int) -> None:
            started.wait()
            i = 0
            while True:
                row = n * 1_000_000 + i
                done = erased.is_set()
                try:
                    blob = vault.encrypt(
                        "note",
                        domain="medical",
                        subject="m-17",
                        context={"table": "notes", "column": "body", "row": row},
                    )
                except SubjectErasedError as exc:
                    with lock:
                        after.append(exc)
                    return
                with lock:
                    made.append((row, blob))
                if done:  # an encryption that began after erase_subject returned succeeded
                    with lock:
                        after.append(None)
                    return
                i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(0.2)
        receipt = vault.erase_subject("m-17", reason="art17", request_id="DSR-2")
        erased.set()
        for thread in threads:
            thread.join(timeout=30)
        assert receipt.status == "granted"
        assert len(after) == 4 and all(isinstance(e, SubjectErasedError) for e in after)
        assert made
        assert_erased(vault, made)
        store = vault.store
        assert isinstance(store, SupportsScopedKeys)
        keys = store.subject_keys("medical", vault.subject_ref("medical", "m-17"))
        assert all(k.state is DekState.DESTROYED for k in keys)


@pytest.mark.slow
def test_two_sweeps_at_once_destroy_each_key_once(tmp_path: Path, store_url: str) -> None:
    keyring = make_keyring(tmp_path)
    url = store_url
    with open_vault(keyring, url) as vault:
        vault.flush_audit()
    plant_buckets(url, 400)
    at = T0 + 500 * HOUR
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "enforce", str(keyring), url, at.isoformat(), "20"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out))
    assert sum(r["keys_destroyed"] for r in reports) == 400
    assert count_destroyed(url) == 400
    with open_vault(keyring, url) as vault:
        log_ = vault.audit_log
        assert log_ is not None and log_.verify().ok
