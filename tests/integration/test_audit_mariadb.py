"""The audit log on MariaDB: times keep their microseconds, and concurrent writers keep one chain.

A bare ``DATETIME`` keeps whole seconds while each event's MAC covers the microseconds, so before
issue 13 an untouched MariaDB log failed verification at event 1.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from vaultkit import KeyDomain, Principal, Vault
from vaultkit.audit import AuditEvent, AuditLog
from vaultkit.keys import LocalKeyProvider

pytestmark = pytest.mark.mariadb

MASTER = os.urandom(32)
DOMAINS = [KeyDomain("medical", restricted=True, audited=True)]


def _mac(key: bytes):  # type: ignore[no-untyped-def]
    return lambda data: hmac.new(key, data, hashlib.sha256).digest()


def _event(at: dt.datetime) -> AuditEvent:
    return AuditEvent("coach-17", "review", "decrypt", "medical", "t", "c", ("r1",), 1, None, at)


def test_an_untouched_log_verifies_with_microsecond_times(mariadb_url: str) -> None:
    """Events whose times carry microseconds verify on MariaDB; the column is DATETIME(6)."""
    engine = sa.create_engine(mariadb_url)
    try:
        log = AuditLog(engine, mac=_mac(os.urandom(32)))
        at = dt.datetime(2026, 12, 1, 10, 19, 38, 123456, tzinfo=dt.UTC)
        log.append([_event(at), _event(at + dt.timedelta(microseconds=1))])
        result = log.verify()
        assert result.ok and result.events == 2, result.reason
        assert [e.at for _, e, _, _ in log.read()] == [at, at + dt.timedelta(microseconds=1)]
        column = next(
            c for c in sa.inspect(engine).get_columns(log.events.name) if c["name"] == "at"
        )
        assert getattr(column["type"], "fsp", None) == 6
    finally:
        engine.dispose()


def _at_column(engine: sa.Engine, log: AuditLog) -> sa.types.TypeEngine[object]:
    return next(c for c in sa.inspect(engine).get_columns(log.events.name) if c["name"] == "at")[
        "type"
    ]


def test_a_log_of_whole_seconds_is_widened_and_its_old_events_are_named(mariadb_url: str) -> None:
    """An `at` column of whole seconds (tables of earlier releases) becomes DATETIME(6) on open;
    an event stored before with its microseconds cut is reported as not verifiable (never as
    intact), the chain through it is still checked, and events written after verify."""
    key = os.urandom(32)
    engine = sa.create_engine(mariadb_url)
    try:
        earlier = AuditLog(engine, mac=_mac(key))
        with engine.begin() as conn:  # the layout earlier releases created
            conn.execute(sa.text("alter table vaultkit_audit_events modify at DATETIME not null"))
        # What an earlier release wrote: MACed over the microseconds, stored in whole seconds.
        earlier.append([_event(dt.datetime(2026, 1, 5, 8, 0, 0, 654321, tzinfo=dt.UTC))])
        assert not earlier.verify().ok
        log = AuditLog(engine, mac=_mac(key))  # this open widens the column
        assert getattr(_at_column(engine, log), "fsp", None) == 6
        log.append([_event(dt.datetime(2026, 12, 1, 10, 0, 0, 5, tzinfo=dt.UTC))])
        result = log.verify()
        assert not result.ok and result.events == 2 and result.truncated == 1
        assert result.first_broken == 1 and "microseconds" in result.reason
        assert "every other event verified" in result.reason
        with engine.begin() as conn:  # an edit of a newer event is named as such
            conn.execute(sa.text("update vaultkit_audit_events set principal = 'x' where seq = 2"))
        edited = log.verify()
        assert edited.first_broken == 2 and "altered or forged" in edited.reason
    finally:
        engine.dispose()


_PROCESS = textwrap.dedent(
    """
    import sys, threading
    from vaultkit import KeyDomain, Principal, Vault
    from vaultkit.keys import LocalKeyProvider

    keyring, url, label, blob = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
    vault = Vault(
        provider=LocalKeyProvider(keyring, create_keys=False),
        store=url,
        domains=[KeyDomain("medical", restricted=True, audited=True)],
        audit_batch_size=1,
    )

    def work(n):
        for i in range(10):
            with vault.acting_as(Principal(f"{label}-{n}", grants={"medical"}), purpose=f"p{i}"):
                assert vault.decrypt(blob) == "note"

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vault.close()
    """
)


def test_threads_and_two_processes_keep_one_chain(mariadb_url: str, tmp_path: Path) -> None:
    """Two processes of four threads each and this process's four threads, all logging at once
    on MariaDB, leave one chain that verifies (the head row lock)."""
    keyring = tmp_path / "keyring.json"
    vault = Vault(
        provider=LocalKeyProvider(keyring, master_key=MASTER),
        store=mariadb_url,
        domains=DOMAINS,
        audit_batch_size=1,
    )
    try:
        blob = vault.encrypt("note", domain="medical")
        vault.flush_audit()
        env = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(MASTER).decode()}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _PROCESS, str(keyring), mariadb_url, label, blob.hex()],
                env=env,
                stderr=subprocess.PIPE,
            )
            for label in ("a", "b")
        ]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(10):
                    coach = Principal(f"main-{n}", grants={"medical"})
                    with vault.acting_as(coach, purpose=f"p{i}"):
                        assert vault.decrypt(blob) == "note"
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-2000:]
        assert errors == []
        assert vault.audit_log is not None
        result = vault.audit_log.verify()
        assert result.ok, result.reason
        decrypts = [e for _, e, _, _ in vault.audit_log.read() if e.action == "decrypt"]
        assert sum(e.count for e in decrypts) == 3 * 4 * 10
        assert {e.principal.split("-")[0] for e in decrypts} == {"main", "a", "b"}
    finally:
        vault.close()
